#!/usr/bin/env bash
# Create .venv (if missing) and install actstore with its test tools, torch first.
# torch==2.13.0 must come before anything that depends on torch: on this kind of machine it is
# the CPU build on disk; installed later, pip would pull GBs of CUDA packages instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
