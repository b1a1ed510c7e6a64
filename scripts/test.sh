#!/usr/bin/env bash
# The README's second command: install everything (with Debian's chromium), run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --with-browser
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
