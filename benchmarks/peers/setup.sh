#!/usr/bin/env bash
# The peers' environment for benchmarks/peers/compare.py: SAELens 6.54.12 (with its
# transformer-lens, datasets, ...) and EleutherAI's sparsify 1.3.3 (PyPI: eai-sparsify) in a
# venv of its own, apart from actstore's (SAELens pins its own versions). Both go in through
# scripts/install_saelens.sh (torch first, the CPU build, as everywhere). Needs PyPI only;
# the benchmark itself runs offline.
# Prints the environment's python (compare.py takes it as --peer-python, default .peers-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=$(SAELENS_VENV="${PEERS_VENV:-.peers-venv}" bash scripts/install_saelens.sh)
echo "$PY"
