#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite. GPU tests skip themselves without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
"${VENV:-.venv}/bin/python" -m pytest "$@"
