#!/usr/bin/env bash
# A separate environment holding SAELens and EleutherAI's sparsify (the peers whose on-disk
# formats our exports write), for the tests that load our exports with the peers themselves.
# Kept apart from actstore's own environment: SAELens pins its own transformer-lens and
# friends. torch first, as everywhere.
# Prints the environment's python, which the test finds through ACTSTORE_SAELENS_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${SAELENS_VENV:-.saelens-venv}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install --quiet torch==2.13.0 >&2
"$ENV/bin/python" -m pip install --quiet sae-lens==6.54.12 eai-sparsify==1.3.3 >&2
echo "$(cd "$ENV" && pwd)/bin/python"
