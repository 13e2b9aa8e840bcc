"""The store and the loader against the disk and the CPU, on generated activations tiled to
a measurable size.

    store    write (encode, checksum, fsync, commit) and cold read (decode) of every shard
             vs writing and cold-reading the same compressed bytes as plain files
    loader   one shuffled epoch, cold and warm, vs sequential plain reads of the store's
             files (cold) and vs decoding every chunk alone (warm); shuffle quality
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actstore.bench.io import drop_cache, local_ceiling, read_files, timed
from actstore.loader.loader import Loader, LoaderConfig
from actstore.loader.shuffle_quality import shuffle_quality
from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore, RowIndex
from actstore.store.spec import DTYPE_ITEMSIZE, Codec, Layout
from actstore.store.writer import write_shard


def tiled_store(url: str, source: ActivationStore, rows: int, threads: int,
                codec: Codec | None = None) -> tuple[ActivationStore, float]:
    """`source`'s rows repeated up to `rows` (context ids offset per copy, so contexts stay
    distinct), written shard by shard with `threads` writers, compressed with `codec` (None:
    the dtype's default); returns it and the seconds the writes took."""
    hook = source.hooks[0]
    x = source.read_torch(hook, 0, source.num_rows)
    index = source.read_index(0, source.num_rows)
    n_ctx = int(index.context.max()) + 1
    copies = -(-rows // len(x))
    x = x.repeat(copies, 1)[:rows]
    context = np.concatenate([index.context + i * n_ctx for i in range(copies)])[:rows]
    position = np.tile(index.position, copies)[:rows]
    token = np.tile(index.token, copies)[:rows]
    row_bytes = x.shape[1] * DTYPE_ITEMSIZE[source.spec.dtype]
    # several shards per writer thread, as generation plans them, so the writers overlap
    layout = Layout.for_sizes(rows, {hook: x.shape[1]}, source.spec.dtype,
                              shard_bytes=min(256 << 20, rows * row_bytes // (4 * threads)),
                              codec=codec)
    spec = source.spec
    store = ActivationStore.create(url, spec, layout, contexts=source.read_contexts())

    def write(s: int) -> None:
        a, b = layout.shard_rows_range(s)
        write_shard(store, s, {hook: x[a:b]},
                    RowIndex(context[a:b], position[a:b], token[a:b]), f"bench-{s}")
    with ThreadPoolExecutor(threads) as pool:
        seconds = timed(lambda: list(pool.map(write, range(layout.num_shards))))
    return store, seconds


def _files(store: ActivationStore) -> list[str]:
    """The activations' shard objects (and an 8-bit store's row scales, read with them)."""
    return sorted(str(p) for folder in (fmt.ACTIVATIONS, fmt.SCALES)
                  for p in Path(store.location.root, folder).rglob("*")
                  if p.is_file() and p.name != "zarr.json")


def measure_store(source: ActivationStore, work: Path, rows: int
                  ) -> tuple[dict[str, Any], ActivationStore]:
    threads = min(4, os.cpu_count() or 1)
    store, t_write = tiled_store(str(work / "tiled"), source, rows, threads)
    hook = store.hooks[0]
    raw = store.num_rows * store.layout.d_model[hook] * DTYPE_ITEMSIZE[store.spec.dtype]
    files = _files(store)
    written = sum(os.path.getsize(f) for f in files)
    blobs = [bytes(os.path.getsize(f)) for f in files]
    disk_write, disk_read = local_ceiling(blobs, str(work / "raw"), threads)

    def read_all() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: store.read_shard(hook, s), range(store.num_shards)))
    drop_cache(store.location.root)
    t_read = timed(read_all)
    return {"rows": store.num_rows, "shards": store.num_shards, "threads": threads,
            "raw_bytes": raw, "stored_bytes": written, "compression_ratio": raw / written,
            "write_mb_per_s": raw / t_write / 1e6,
            "write_stored_mb_per_s": written / t_write / 1e6,
            "disk_write_mb_per_s": written / disk_write / 1e6,
            "write_vs_disk": disk_write / t_write,
            "read_mb_per_s": raw / t_read / 1e6, "read_stored_mb_per_s": written / t_read / 1e6,
            "disk_read_mb_per_s": written / disk_read / 1e6,
            "read_vs_disk": disk_read / t_read}, store


def decode_all(store: ActivationStore, threads: int) -> None:
    """Every chunk decoded into one buffer with `threads` threads: no shuffle, no batches
    (what the CPU allows the loader)."""
    hook = store.hooks[0]
    n, c = store.num_rows, store.layout.chunk_rows
    out = np.empty((n, store.layout.d_model[hook]),
                   store.decoders[fmt.activation_path(hook)].dtype)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda a: store.read_into(hook, a, min(n, a + c), out[a:a + c]),
                      range(0, n, c)))


def window_rows(store: ActivationStore, batch: int) -> int:
    """The loader's shuffle window for a benchmark: its default, or a quarter of a smaller
    store (whole batches, at least one), so an epoch spans several windows."""
    return min(LoaderConfig.shuffle_buffer, max(batch, store.num_rows // 4 // batch * batch))


def measure_loader(store: ActivationStore, batch: int, repeats: int = 2) -> dict[str, Any]:
    """One epoch cold (vs sequential plain reads of the same files) and warm (vs decoding
    alone), each the best of `repeats` alternated runs; and shuffle quality."""
    hook = store.hooks[0]
    cfg = LoaderConfig(hooks=(hook,), batch_size=batch,
                       shuffle_buffer=window_rows(store, batch))
    files = _files(store)

    def epoch() -> int:
        return sum(len(b.x[hook]) for b in Loader(cfg, store=store))

    def cold(fn: Any) -> float:
        drop_cache(store.location.root)
        return timed(fn)
    t_disk, t_cold = float("inf"), float("inf")
    for _ in range(repeats):  # alternated: single cold runs on a VM spread 2x
        t_disk, t_cold = min(t_disk, cold(lambda: read_files(files))), min(t_cold, cold(epoch))
    n = epoch()
    t_warm = min(timed(epoch) for _ in range(repeats))
    t_dec = min(timed(lambda: decode_all(store, cfg.read_threads)) for _ in range(repeats))
    q_cfg = LoaderConfig(hooks=(hook,), batch_size=batch, shuffle_buffer=cfg.shuffle_buffer,
                         with_rows=True)
    q = shuffle_quality(store, (b.rows for b in Loader(q_cfg, store=store)
                                if b.rows is not None))
    return {"rows": n, "batch": batch, "shuffle_buffer": cfg.shuffle_buffer,
            "read_threads": cfg.read_threads,
            "stored_bytes": sum(os.path.getsize(f) for f in files),
            "epoch_cold_rows_per_s": n / t_cold, "disk_cold_rows_per_s": n / t_disk,
            "cold_vs_disk": t_disk / t_cold, "epoch_warm_rows_per_s": n / t_warm,
            "decode_rows_per_s": n / t_dec, "warm_vs_decode": t_dec / t_warm,
            "shuffle_same_context_ratio": q.ratio}


def rows_of(store: ActivationStore, count: int) -> torch.Tensor:
    """The first `count` rows (repeated when the store is smaller), float32."""
    hook = store.hooks[0]
    x = store.read_torch(hook, 0, min(count, store.num_rows)).float()
    return x.repeat(-(-count // len(x)), 1)[:count]
