#!/usr/bin/env bash
# Install twoshot into the active Python environment with a PyTorch build that fits the machine.
#
# - torch already importable: kept as it is (any version >= 2.1).
# - an NVIDIA GPU (nvidia-smi lists one): the default PyPI wheel, which is a CUDA build.
# - no GPU: a CPU wheel, from a local wheelhouse when pip's find-links provides one,
#   otherwise from PyTorch's CPU index, so that no CUDA packages (several GB) are downloaded.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
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

if [ -n "$extras" ]; then
    pip_install -e ".[$extras]"
else
    pip_install -e .
fi
