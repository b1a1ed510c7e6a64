#!/usr/bin/env bash
# The README's first command: install, then open the dashboard on the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m streamlit run app.py "$@"
