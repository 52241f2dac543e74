#!/usr/bin/env bash
# Refresh constraints.txt: resolve tunelab's open ranges (pyproject.toml) afresh in a
# throw-away virtual environment and freeze what pip chose. Set-up installs through this
# file, so every machine gets exactly the versions CI tested; after a refresh, run
# `make test` before committing it. `make lock` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
PIP="$TMP/venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
$PIP install "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
$PIP install ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
{
  echo "# What set-up installs (scripts/setup.sh: pip install -c constraints.txt); the versions"
  echo "# CI tested. pyproject.toml keeps open ranges for users. Refresh: make lock, then make test."
  # local version labels (+cpu) dropped: the pin matches the CPU build set-up installs
  "$TMP/venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null \
    | grep -v -e '^tunelab' -e '^-e ' | sed -E 's/\+[a-z0-9.]+$//' | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
