#!/usr/bin/env bash
# Creates .venv (if missing) and installs lovasz with its test tools. Pins the CPU build of torch that
# installs from local disk; on a GPU machine install your CUDA torch first and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[test]"
