#!/usr/bin/env bash
# Set up Modelsmith on a fresh machine: a Python environment in .venv with everything the loop needs.
# Idempotent: a second run with an unchanged pyproject.toml only checks the environment.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.modelsmith-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU build of torch first, so nothing later pulls a CUDA build. On a machine without the
  # local wheel store, set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (or install the gpu extra).
  .venv/bin/python -m pip install -q "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  .venv/bin/python -m pip install -q -e '.[test,anthropic]'
  .venv/bin/python -m pip check
  echo "$want" > "$stamp"
fi
