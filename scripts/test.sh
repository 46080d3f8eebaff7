#!/usr/bin/env bash
# Set up the environment and run the test suite (unit tests + small integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/python -m pytest -q "$@"
