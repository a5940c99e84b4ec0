#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
lovasz demo "$@"
