#!/usr/bin/env bash
# Every GPU check of the project in one call, on a bare GPU machine that has Python 3.12 and
# torch but neither Ray nor a network (the `device` tool's machines), in under 10 minutes on an
# H100 (the steps' timeouts add up to 580 s, under the device tool's 600 s per call):
#   1. the CUDA tests (pytest -m gpu, on the test modules that need no Ray: the kernels, the
#      loader's pinned and 8-bit delivery, 8-bit generation quantised on the GPU (bit for
#      bit the CPU's quantisation), training of every architecture and kind on the
#      GPU beside the CPU: JumpReLU, Matryoshka, crosscoder, transcoder)
#   2. actstore bench --device cuda   (random GPT-2-small shape, block 6, context 1024)
#   3. benchmarks.large_dictionary    (dense vs sparse TopK step at 131,072 and 1,048,576
#                                      latents; the largest that trains on this GPU; tp=8)
#      and with --transcoder / --clt   (a skip transcoder at GPT-2-small's MLP shape, 24,576 and
#                                      131,072 latents; a CLT over its 12 MLPs with 24,576 and
#                                      131,072 latents in all, 2,048 and 10,923 per layer)
#   4. benchmarks.fastica             (torch on the GPU beside scikit-learn on its CPU)
# Results go to $OUT (the device tool's folder) or bench-out/gpu: tests.log, bench.md,
# bench.json, large_dictionary.json, transcoder.json, clt.json, fastica.json, gpu.log.
#
# Wheels it needs beside what that machine has (torch, transformers, numpy, pyarrow, fsspec,
# safetensors, scikit-learn, matplotlib, pytest, tokenizers, numba), for CPython 3.12 x86-64:
#   zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1   (~10 MB)
# `bash benchmarks/gpu.sh --fetch` downloads them into .whl/ here (run it where pip has an
# index); the device call then carries .whl and this script installs them from there.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS="zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1"
if [ "${1:-}" = "--fetch" ]; then
    mkdir -p .whl
    for w in $WHEELS; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"
    done
    ls -la .whl
    exit 0
fi
RESULTS="${OUT:-bench-out/gpu}"
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/actstore-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/actstore-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$RESULTS/gpu.log"; }
status=0
log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo no nvidia-smi)"
log "1/4 CUDA tests"
timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
    tests/trainer/dictionary/test_kernels.py tests/loader/test_loader.py \
    tests/trainer/training/test_train.py tests/generate/test_float8_generate.py \
    >"$RESULTS/tests.log" 2>&1 || { status=1; log "CUDA tests failed (tests.log)"; }
tail -3 "$RESULTS/tests.log" | tee -a "$RESULTS/gpu.log"
log "2/4 actstore bench --device cuda"
# scratch stores (~2 GB) on local disk, not in the results folder that travels back
SCRATCH=$(mktemp -d /tmp/actstore-bench.XXXXXX)
timeout 140 "$PY" -m actstore bench --device cuda --out "$SCRATCH" \
    >>"$RESULTS/gpu.log" 2>&1 || { status=1; log "bench failed"; }
cp "$SCRATCH/bench.md" "$SCRATCH/bench.json" "$RESULTS/" 2>/dev/null
rm -rf "$SCRATCH"
log "3/4 large dictionaries"
timeout 110 "$PY" -m benchmarks.large_dictionary --device cuda --latents 131072 1048576 \
    --steps 5 --largest --out "$RESULTS/large_dictionary.json" \
    >>"$RESULTS/gpu.log" 2>&1 || { status=1; log "large_dictionary failed"; }
log "3b/4 transcoders (GPT-2-small MLP shape, skip)"
timeout 70 "$PY" -m benchmarks.large_dictionary --device cuda --latents 24576 131072 \
    --kernels sparse --transcoder --skip --steps 5 --out "$RESULTS/transcoder.json" \
    >>"$RESULTS/gpu.log" 2>&1 || { status=1; log "transcoder step failed"; }
log "3c/4 cross-layer transcoder (GPT-2-small's 12 MLPs, 24,576 and 131,072 latents in all)"
timeout 80 "$PY" -m benchmarks.large_dictionary --device cuda --clt 12 --latents 2048 10923 \
    --kernels sparse --steps 5 --out "$RESULTS/clt.json" \
    >>"$RESULTS/gpu.log" 2>&1 || { status=1; log "CLT step failed"; }
log "4/4 FastICA"
timeout 60 "$PY" -m benchmarks.fastica --device cuda --out "$RESULTS/fastica.json" \
    >>"$RESULTS/gpu.log" 2>&1 || { status=1; log "fastica failed"; }
log "done (status $status): $(ls "$RESULTS" | tr '\n' ' ')"
exit $status
