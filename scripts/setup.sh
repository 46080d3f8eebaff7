#!/usr/bin/env bash
# Create .venv (once) and install medunlearn with its test tools into it.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medunlearn-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
  # torch/torchvision: the releases on this machine's disk (see README, "Installing").
  .venv/bin/python -m pip install --quiet -e "${MEDUNLEARN_EXTRAS:-.[dev,ray]}" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import medunlearn, torch, torchvision, medmnist, safetensors" \
    || { echo "setup: installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
