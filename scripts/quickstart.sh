#!/usr/bin/env bash
# The main job on the embedded default, offline: install, then capture MiniLM activations of
# the embedded corpus into a local store, describe it and verify it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/python -m scripts.quickstart "${1:-stores}"
