#!/usr/bin/env bash
# Set up the environment and run the main job on the bundled PneumoniaMNIST data:
# train a classifier, forget 10% of its training images, verify and save the results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
OUT=${OUT:-runs/quickstart}
.venv/bin/medunlearn train --dataset pneumoniamnist --view binary --epochs 10 --seed 0 \
  --out "$OUT/original" "$@"
