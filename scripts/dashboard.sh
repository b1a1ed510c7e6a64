#!/usr/bin/env bash
# The README's first command: install, then open the dashboard on the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# `mergescope dashboard` passes .streamlit/config.toml's settings to Streamlit, works offline
# (HF_HUB_OFFLINE), lets idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE: spinning threads made
# small merges 100× slower, docs/BENCHMARKS.md), and hands on --port, --address and any Streamlit flag.
exec .venv/bin/mergescope dashboard "$@"
