#!/usr/bin/env bash
# A separate environment holding EleutherAI's delphi (eai-delphi), for the test that loads
# `actstore interpret --delphi-export` with delphi's own LatentDataset. delphi requires vLLM
# (and bitsandbytes, datasets, sparsify, flask, fire) for its pipeline, but its cache loader
# (delphi.latents) imports none of them: delphi goes in without its dependencies, then only
# the ones delphi.latents imports (pip then reports the others as missing: expected). torch
# first, as everywhere.
# Prints the environment's python, which the test finds through ACTSTORE_DELPHI_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${DELPHI_VENV:-.delphi-venv}
if [ ! -x "$ENV/bin/python" ]; then
    python3 -m venv "$ENV"
fi
"$ENV/bin/python" -m pip install --quiet torch==2.13.0 >&2
"$ENV/bin/python" -m pip install --quiet --no-deps eai-delphi==0.1.3 >&2
"$ENV/bin/python" -m pip install --quiet asyncer beartype blobfile faiss-cpu jaxtyping orjson \
    safetensors sentence-transformers simple_parsing tqdm transformers >&2
echo "$(cd "$ENV" && pwd)/bin/python"
