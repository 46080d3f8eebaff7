#!/usr/bin/env bash
# Set up the environment (with the test tools and Ray, which the Ray-backend test needs) and
# run the test suite (unit tests + small integration tests).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDUNLEARN_EXTRAS="${MEDUNLEARN_EXTRAS:-dev,ray}" bash scripts/setup.sh
source scripts/env.sh
.venv/bin/python -m pytest -q "$@"
