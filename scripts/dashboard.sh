#!/usr/bin/env bash
# The README's first command: install, then open the dashboard on the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Idle OpenMP threads sleep instead of spinning: on a machine busy with other work, spinning
# threads made small merges 100× slower (docs/BENCHMARKS.md).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m streamlit run app.py "$@"
