#!/usr/bin/env bash
# Install the system packages the test suite needs: Debian's chromium (headless rendering of
# the HTML reports in tests/test_report.py). Idempotent and quiet: does nothing when chromium is
# already installed; otherwise one apt-get update + install, printing output only on failure.
# Needs root (or passwordless sudo). Usage: bash scripts/ci-system-deps.sh
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "ci-system-deps: chromium is missing and this is not root (no sudo); install it with" \
             "'apt-get install -y chromium' as root." >&2
        exit 1
    fi
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq chromium; } >"$log" 2>&1; then
    echo "ci-system-deps: installing chromium failed:" >&2
    cat "$log" >&2
    exit 1
fi
command -v chromium >/dev/null 2>&1 || { echo "ci-system-deps: chromium not on PATH" >&2; exit 1; }
