"""Trainer throughput: `trainer.training.train.train` streaming from a local store vs the same
dictionaries stepped on batches already in memory, and vs a plain TopK step, in one run.

    python -m benchmarks.train_throughput [--latents 2048 8192] [--windows 4] [--device cuda]

TopK, d_model=768, k=32, batch 4096. The store holds synthetic bf16 rows (a sparse mix of
8192 random directions plus noise, so the dictionary has something to fit), written with the
default layout and write-time shuffle, and is larger than the timed interval: the loader's
shuffle window is `--shuffle-buffer` rows (default 16,384 = 4 batches, so that on a CPU the
timed steps cross `--windows` windows in minutes), and the script prints how many rows (and
windows) the loader decoded inside the timed interval. Both sides run the same `Ensemble` step and
metrics; the first `--warmup` steps are not timed. The third column is a plain TopK step
(nn.Linear encoder and decoder, top-k, MSE, Adam: what a naive trainer does) on the same
batches in memory, measured in the same run, the reference the trainer must beat.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actstore import ActivationStore, Layout, RowIndex, StoreSpec, write_shard
from actstore.loader.delivery import Normalizer
from benchmarks.decode_probe import probe_decoding
from benchmarks.loader_throughput import TopKStep
from trainer.training.config import TrainConfig
from trainer.training.ensemble import Ensemble, adam, warmup_decay
from trainer.training.metrics import Meter
from trainer.training.train import train

HOOK, D, K, BATCH = "blocks.6", 768, 32, 4096


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


def store_rate(cfg: TrainConfig, warmup: int) -> tuple[float, int]:
    """Tokens/s of `train` from the end of step `warmup` to the last step, and the rows the
    loader decoded in between (timed at the metric flushes, on the host)."""
    flushes: list[float] = []
    real = Meter.flush

    def timed_flush(self: Meter) -> list[dict[str, float]]:
        out = real(self)  # reduces: the device has finished the steps before it
        flushes.append(time.perf_counter())
        return out
    Meter.flush = timed_flush  # type: ignore[method-assign]
    try:
        with probe_decoding() as probe:
            train(cfg)
    finally:
        Meter.flush = real  # type: ignore[method-assign]
    t0, t1 = flushes[0], flushes[-1]  # after step `warmup`, after the last step
    steps = cfg.steps
    return (steps - warmup) * cfg.batch_size / (t1 - t0), probe.rows_between(t0, t1)


def memory_rates(cfg: TrainConfig, store: ActivationStore, device: torch.device,
                 warmup: int) -> tuple[float, float]:
    """The same steps and metrics on batches already on the device; then a plain TopK step
    on the same batches."""
    steps = cfg.steps
    norm = Normalizer.of(store, HOOK, cfg.normalize)
    x_all = norm.apply(store.read_torch(HOOK, 0, steps * BATCH).float()).to(device)
    ens = Ensemble(cfg.dictionaries(D), adam(cfg.lr_of), seed=cfg.seed, grad_clip=cfg.grad_clip,
                   schedule=warmup_decay(steps, cfg.warmup, cfg.decay_start)).to(device)
    meter = Meter(ens.members, device)
    autocast = cfg.autocast and device.type == "cuda"
    start = 0.0
    for step in range(steps):
        x = x_all[step * BATCH:(step + 1) * BATCH]
        meter.add(x, ens.step(x, autocast))
        if (step + 1) % cfg.intervals[0] == 0:
            meter.flush()  # the same host sync as the logged run
            if step + 1 == warmup:
                start = time.perf_counter()
    ours = (steps - warmup) * BATCH / (time.perf_counter() - start)
    naive = TopKStep(D, cfg.latents[0], K, device)
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            naive(x_all[step * BATCH:(step + 1) * BATCH], sync=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return ours, (steps - warmup) * BATCH / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, nargs="+", default=None,
                   help="dictionary sizes, one run each (default: 2048 8192 on cpu, "
                   "24576 131072 on cuda)")
    p.add_argument("--windows", type=int, default=12,
                   help="loader windows the timed steps span (default: 12; the loader reads "
                   "up to ~4 ahead, so about 8 are decoded while timed)")
    p.add_argument("--shuffle-buffer", type=int, default=4 * BATCH,
                   help="the loader's window in rows (default: 16384)")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first (default: 4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda when available, else cpu")
    p.add_argument("--dir", default=None, help="where the store goes (default: a temp dir)")
    a = p.parse_args()
    a.latents = a.latents or ([24_576, 131_072] if a.device == "cuda" else [2048, 8192])
    per_window = a.shuffle_buffer // BATCH
    steps = a.warmup + a.windows * per_window
    root = Path(a.dir or tempfile.mkdtemp(prefix="actstore-train-bench-"))
    store = synthetic_store(str(root / "store"), steps * BATCH + a.shuffle_buffer)
    device = torch.device(a.device)
    print(f"TopK d={D} k={K} batch={BATCH}; store {store.num_rows:,} rows; loader window "
          f"{a.shuffle_buffer:,} rows; {steps - a.warmup} timed steps after {a.warmup}; "
          f"device {device}, torch threads {torch.get_num_threads()}")
    for n in a.latents:
        cfg = TrainConfig(store=(store.url,), hook=(HOOK,), arch="topk", latents=(n,), k=(K,),
                          tokens=steps * BATCH, batch_size=BATCH, out=str(root / f"run-{n}"),
                          log_every=a.warmup, checkpoint_every=steps * a.warmup,
                          eval_contexts=0, progress=False, plots=False, overwrite=True,
                          bias_init="mean", device=a.device, shuffle_buffer=a.shuffle_buffer)
        from_store, decoded = store_rate(cfg, a.warmup)
        in_memory, naive = memory_rates(cfg, store, device, a.warmup)
        print(f"latents {n:>7}: store {from_store:,.0f} tok/s ({decoded:,} rows = "
              f"{decoded / a.shuffle_buffer:.1f} windows decoded while timed), memory "
              f"{in_memory:,.0f} tok/s, naive TopK step {naive:,.0f} tok/s; "
              f"store/memory {from_store / in_memory:.2f}, store/naive "
              f"{from_store / naive:.2f}", flush=True)


if __name__ == "__main__":
    main()
