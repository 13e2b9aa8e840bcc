#!/usr/bin/env bash
# A separate environment holding SAELens (the peer whose on-disk format our export writes), for
# the test that loads our exports with SAELens itself. Kept apart from actstore's own
# environment: SAELens pins its own transformer-lens and friends. torch first, as everywhere.
# Prints the environment's python, which the test finds through ACTSTORE_SAELENS_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${SAELENS_VENV:-.saelens-venv}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install --quiet torch==2.13.0 >&2
"$ENV/bin/python" -m pip install --quiet sae-lens==6.54.12 >&2
echo "$(cd "$ENV" && pwd)/bin/python"
