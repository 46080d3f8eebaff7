#!/usr/bin/env bash
# Create .venv (once) and install medunlearn into it, with the optional extras named in
# MEDUNLEARN_EXTRAS (comma-separated: dev = test tools, ray = the Ray backend of
# 'medunlearn experiment'). scripts/quickstart.sh installs no extras; scripts/test.sh installs
# dev,ray (the test suite includes a Ray-backend test).
# Re-running is cheap: nothing is installed while pyproject.toml is unchanged and the wanted
# extras are already in; extras installed earlier are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.medunlearn-installed
want_hash=$(sha256sum pyproject.toml | cut -c1-16)
have_hash="" have_extras=""
if [ -f "$stamp" ]; then
  read -r have_hash have_extras < "$stamp" || true
fi
[ "$have_hash" = "$want_hash" ] || have_extras=""
extras="$have_extras"
missing=0
[ "$have_hash" = "$want_hash" ] || missing=1
for e in $(echo "${MEDUNLEARN_EXTRAS:-}" | tr ',' ' '); do
  case ",$extras," in
    *",$e,"*) ;;
    *) extras="${extras:+$extras,}$e"; missing=1 ;;
  esac
done
install_with_uv() {
  .venv/bin/python -m pip install --quiet uv >/dev/null 2>&1 || return 1
  .venv/bin/uv pip install --quiet --python .venv/bin/python \
    --override scripts/install-overrides.txt "${constraints[@]}" -e ".${extras:+[$extras]}"
}
if [ "$missing" = 1 ]; then
  # Two first-time installs at once (two clones on one machine) fill their .venvs from one uv
  # cache, and one was seen to end with a broken torch: installs on a machine take turns.
  if command -v flock >/dev/null 2>&1; then
    lockdir=${XDG_CACHE_HOME:-$HOME/.cache}
    mkdir -p "$lockdir"
    exec 9>"$lockdir/medunlearn-setup.lock"
    flock 9 || true
  fi
  echo "setup: installing medunlearn${extras:+ with [$extras]} into .venv (first time: about" \
       "5 GB, mostly the CUDA build of torch; see README 'Install cost')" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
  # uv installs the same packages as pip in a fraction of the time (parallel downloads); the
  # override leaves out Triton, a GPU compiler that torch pulls in and a CPU never uses (0.9 GB).
  # pip is the fallback where uv cannot be installed or fails. The caps of
  # /etc/xdg/pip/constraints.txt (where present) apply to both.
  constraints=()
  [ -f /etc/xdg/pip/constraints.txt ] && constraints=(-c /etc/xdg/pip/constraints.txt)
  if [ "${MEDUNLEARN_NO_UV:-}" != 1 ] && install_with_uv; then
    :
  else
    echo "setup: uv unavailable or failed; installing with pip (slower)" >&2
    .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}" 2>&1 \
      | grep -v "is ignored" || true
  fi
  .venv/bin/python -c "import medunlearn, torch, torchvision, medmnist, safetensors" \
    || { echo "setup: installation failed" >&2; exit 1; }
  echo "$want_hash $extras" > "$stamp"
fi
