#!/usr/bin/env bash
# The peers' environment for benchmarks/peers/compare.py: SAELens 6.54.12 (with its
# transformer-lens, datasets, ...) and EleutherAI's sparsify 1.3.3 (PyPI: eai-sparsify) in a
# venv of its own, apart from actstore's (SAELens pins its
# own versions). torch first, the CPU build, as everywhere: installed after its dependents, pip
# would pull GBs of CUDA packages. Needs PyPI only; the benchmark itself runs offline.
# Prints the environment's python (compare.py takes it as --peer-python, default .peers-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV=${PEERS_VENV:-.peers-venv}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install --quiet torch==2.13.0 >&2
"$ENV/bin/python" -m pip install --quiet sae-lens==6.54.12 eai-sparsify==1.3.3 >&2
echo "$(cd "$ENV" && pwd)/bin/python"
