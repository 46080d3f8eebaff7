#!/usr/bin/env bash
# Set up the environment and run the main job on the bundled PneumoniaMNIST data: train a
# classifier, retrain the exact reference, forget 10% of the training images with SalUn-CRA,
# then evaluate (utility, clinical risk, privacy, representation) and apply the safety gate.
# Extra arguments go to 'medunlearn pipeline' (e.g. --method newton --forget positive:0.2).
# Installs medunlearn without optional extras (no Ray, no test tools); MEDUNLEARN_EXTRAS=ray
# adds the Ray backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
.venv/bin/medunlearn pipeline --dataset pneumoniamnist --view binary --forget random:0.1 \
  --method salun-cra --seed 0 --out "${OUT:-runs/quickstart}" "$@"
echo
echo "Next: 'source .venv/bin/activate' puts medunlearn on PATH for the README's commands"
echo "(run them from this folder; they find the bundled data as this script did)."
