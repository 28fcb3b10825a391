#!/usr/bin/env bash
# Install twoshot into the active Python environment with a PyTorch build that fits the machine.
#
# - torch already importable: kept as it is (any version >= 2.1).
# - an NVIDIA GPU (nvidia-smi lists one): the default PyPI wheel, which is a CUDA build.
# - no GPU: a CPU wheel, from a local wheelhouse when pip's find-links provides one,
#   otherwise from PyTorch's CPU index, so that no CUDA packages (several GB) are downloaded.
#
# --locked installs every other package at the exact version in requirements/check.txt (the
# check environment that CI lints and tests with; refreshed by scripts/lock.sh) and fails if
# anything it installed is not pinned there. Without it, pyproject.toml's lower bounds let pip
# take the newest releases.
# Usage: scripts/install.sh [--locked] [EXTRAS]   e.g. scripts/install.sh --locked dev
set -euo pipefail
cd "$(dirname "$0")/.."
lock="requirements/check.txt"
locked=false
if [ "${1:-}" = "--locked" ]; then
    locked=true
    shift
fi
extras="${1:-}"
pip_install() { python -m pip install --disable-pip-version-check "$@"; }

if python -c "import torch" 2>/dev/null; then
    echo "install: keeping torch $(python -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing a CUDA build of torch"
    pip_install "torch>=2.1"
elif pip_install --no-index --no-deps "torch>=2.1" 2>/dev/null; then
    echo "install: no GPU, installed a CPU build of torch from the local wheelhouse"
else
    echo "install: no GPU, installing a CPU build of torch from PyTorch's CPU index"
    pip_install "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu
fi

target="."
[ -z "$extras" ] || target=".[$extras]"
if ! $locked; then
    pip_install -e "$target"
    exit 0
fi

echo "install: pinning every package but torch to $lock"
# The build backend is pinned too: an isolated build would take the newest setuptools.
pip_install -c "$lock" setuptools
pip_install --no-build-isolation -c "$lock" -e "$target"
python - "$lock" <<'PY'
"""Fail when the environment holds a package that the lock does not pin at its version."""

import re
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


pinned = {}
with open(sys.argv[1], encoding="utf-8") as lock:
    for line in lock:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pinned[canonical(name)] = version.strip()
# torch and the CUDA runtime it brings are chosen per machine; twoshot is the project itself.
exempt = re.compile(r"^(pip|torch|twoshot|triton|nvidia-.*|cuda-.*)$")
loose = []
for dist in metadata.distributions():
    name = canonical(dist.metadata["Name"])
    if not exempt.match(name) and pinned.get(name) != dist.version:
        loose.append(f"{name} {dist.version} (lock: {pinned.get(name, 'absent')})")
if loose:
    sys.exit(f"install: not as in {sys.argv[1]}: {', '.join(sorted(loose))}; run scripts/lock.sh")
print(f"install: {len(pinned)} packages as pinned in {sys.argv[1]}")
PY
