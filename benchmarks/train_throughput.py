"""Trainer throughput: `trainer.train.train` streaming from a local store vs the same
dictionaries stepped on batches already in memory, in one run.

    python -m benchmarks.train_throughput [--latents 24576 131072] [--steps 12] [--device cuda]

TopK, d_model=768, k=32, batch 4096 (the issue's shapes). The store holds synthetic bf16 rows
(a sparse mix of 8192 random directions plus noise, so the dictionary has something to fit),
written with the default layout and write-time shuffle. Both sides run the same `Ensemble`
step and the same metrics; the first `--warmup` steps are not timed. On cuda the store rate is
also divided by the naive TopK step DESIGN.md §3 measured on an H100 (0.83 M tokens/s at
24,576 latents, 0.17 M at 131,072), the issue's first target (>= 1.0x).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actstore import ActivationStore, Layout, RowIndex, StoreSpec, write_shard
from actstore.loader import Normalizer
from trainer.config import TrainConfig
from trainer.ensemble import Ensemble, adam, warmup_decay
from trainer.logs import read_metrics
from trainer.metrics import Meter
from trainer.train import train

HOOK, D, K, BATCH = "blocks.6", 768, 32, 4096
NAIVE_H100 = {24_576: 0.83e6, 131_072: 0.17e6}  # DESIGN.md §3, tokens/s


def synthetic_store(url: str, rows: int) -> ActivationStore:
    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(8192, D, generator=gen), dim=1)
    spec = StoreSpec(model="synthetic", hooks=(HOOK,), dataset="synthetic", context_length=128,
                     tokenizer="none", tokenizer_hash="bench")
    store = ActivationStore.create(url, spec, Layout.for_sizes(rows, {HOOK: D}, spec.dtype))
    for s in range(store.num_shards):
        a, b = store.layout.shard_rows_range(s)
        idx = torch.randint(0, 8192, (b - a, 16), generator=gen)
        coef = torch.rand(b - a, 16, generator=gen) * 3
        x = (coef[..., None] * atoms[idx]).sum(1) + 0.1 * torch.randn(b - a, D, generator=gen)
        r = np.arange(a, b)
        write_shard(store, s, {HOOK: x.bfloat16()}, RowIndex(
            r // 128, (r % 128).astype(np.int32), np.zeros(b - a, np.int32)), "bench")
    return store


def store_rate(cfg: TrainConfig, warmup: int) -> float:
    """Tokens/s of `train` between the end of step `warmup` and the last step (its log)."""
    train(cfg)
    lines = [r for r in read_metrics(cfg.out) if "dictionaries" in r]
    first = next(r for r in lines if r["step"] == warmup)
    return float((lines[-1]["tokens"] - first["tokens"]) / (lines[-1]["time"] - first["time"]))


def memory_rate(cfg: TrainConfig, store: ActivationStore, device: torch.device,
                warmup: int) -> float:
    """The same steps and metrics on batches already on the device."""
    steps = cfg.tokens // cfg.batch_size
    norm = Normalizer.of(store, HOOK, cfg.normalize)
    x_all = norm.apply(store.read_torch(HOOK, 0, steps * BATCH).float()).to(device)
    ens = Ensemble(cfg.dictionaries(D), adam(cfg.lr), seed=cfg.seed, grad_clip=cfg.grad_clip,
                   schedule=warmup_decay(steps, cfg.warmup_steps, cfg.decay_start)).to(device)
    meter = Meter(ens.members, device)
    autocast = cfg.autocast and device.type == "cuda"
    start = 0.0
    for step in range(steps):
        x = x_all[step * BATCH:(step + 1) * BATCH]
        meter.add(x, ens.step(x, autocast))
        if (step + 1) % cfg.log_every == 0:
            meter.flush()  # the same host sync as the logged run
            if step + 1 == warmup:
                start = time.perf_counter()
    return (steps - warmup) * BATCH / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--latents", type=int, nargs="+", default=[24_576, 131_072])
    p.add_argument("--steps", type=int, default=12, help="timed steps (after warmup)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", default=None, help="where the store goes (default: a temp dir)")
    a = p.parse_args()
    steps = a.warmup + a.steps
    root = Path(a.dir or tempfile.mkdtemp(prefix="actstore-train-bench-"))
    store = synthetic_store(str(root / "store"), steps * BATCH * 2)
    device = torch.device(a.device)
    print(f"TopK d={D} k={K} batch={BATCH}, {a.steps} timed steps after {a.warmup}, "
          f"device {device}, threads {torch.get_num_threads()}")
    for n in a.latents:
        cfg = TrainConfig(store=store.url, hook=HOOK, arch="topk", latents=(n,), k=(K,),
                          tokens=steps * BATCH, batch_size=BATCH, out=str(root / f"run-{n}"),
                          log_every=a.warmup, checkpoint_every=steps * a.warmup,
                          eval_contexts=0, progress=False, plots=False,
                          bias_init="mean", device=a.device)
        from_store = store_rate(cfg, a.warmup)
        in_memory = memory_rate(cfg, store, device, a.warmup)
        line = (f"latents {n:>7}: store {from_store:,.0f} tok/s, memory {in_memory:,.0f} "
                f"tok/s, ratio {from_store / in_memory:.2f}")
        if device.type == "cuda" and n in NAIVE_H100:
            line += f", vs DESIGN naive step {from_store / NAIVE_H100[n]:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
