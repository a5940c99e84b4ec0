#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests benchmarks examples
python -m pytest -q -p no:cacheprovider
