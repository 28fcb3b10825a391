#!/usr/bin/env bash
# Lint, format and type checks, as CI runs them before the tests (needs the dev extras).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check src tests benchmarks
python -m ruff format --check src tests benchmarks
python -m mypy
