#!/usr/bin/env bash
# A separate environment holding circuit-tracer (whose transcoder-set format our
# export_circuit_tracer writes), for the test that loads our export with circuit-tracer itself.
# Kept apart from actstore's own environment: circuit-tracer pins its own transformer-lens,
# nnsight and friends. torch first, as everywhere (else pip pulls CUDA).
# Prints the environment's python, which the test finds through ACTSTORE_CIRCUIT_TRACER_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${CIRCUIT_TRACER_VENV:-.circuit-venv}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install --quiet torch==2.13.0 >&2
"$ENV/bin/python" -m pip install --quiet circuit-tracer==0.5.0 >&2
echo "$(cd "$ENV" && pwd)/bin/python"
