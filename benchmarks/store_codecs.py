"""Store write/read throughput and compression on real MiniLM activations, vs raw files.

    python -m benchmarks.store_codecs [--rows 128000] [--s3] [--dtypes float8_e4m3 ...]

For each candidate codec: write MB/s (raw activation bytes per second, fsync and commit
included), cold read MB/s, compression ratio; beside it the same bytes written and read with
plain numpy/open() (local) or single PUT/GET (S3) as the ceiling, and the ratio to it. Reads are
made cold with posix_fadvise(DONTNEED) on every file, which needs no root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from actstore import ActivationStore, Codec, Layout, RowIndex, StoreSpec, write_shard
from actstore.bench.io import drop_cache, local_ceiling, timed
from actstore.store.format import ACTIVATIONS, SCALES, is_float8, to_storage, torch_dtype
from actstore.store.quant import quantise
from actstore.store.spec import StorageDtype
from benchmarks.minilm_activations import minilm_activations

HOOK = "encoder.layer.3"
CODECS = [Codec("blosc-zstd", 3, "bitshuffle"), Codec("blosc-zstd", 3, "shuffle"),
          Codec("blosc-zstd", 1, "bitshuffle"), Codec("blosc-zstd", 5, "bitshuffle"),
          Codec("blosc-lz4", 5, "shuffle"),
          Codec("blosc-lz4", 5, "bitshuffle"), Codec("zstd", 3, "noshuffle"),
          Codec("none", 0, "noshuffle")]
#: 8-bit codes have one byte per value, so blosc's byte shuffle is a no-op: "shuffle" stands
#: for no filter, against bit-shuffle, lz4 and plain zstd.
FLOAT8_CODECS = [Codec("blosc-zstd", 3, "shuffle"), Codec("blosc-zstd", 3, "bitshuffle"),
                 Codec("blosc-zstd", 5, "shuffle"), Codec("blosc-lz4", 5, "bitshuffle"),
                 Codec("blosc-lz4hc", 2, "bitshuffle"), Codec("zstd", 3, "noshuffle")]


@dataclass
class Result:
    """One measured configuration."""

    backend: str
    codec: str
    dtype: str
    chunk_kib: int
    ratio: float
    write_mbps: float
    read_mbps: float
    write_vs_ceiling: float
    read_vs_ceiling: float
    bytes_per_row: float = 0.0
    """Stored bytes per row (an 8-bit store's row scales included): comparable across dtypes,
    unlike `ratio`, which is against each dtype's own raw size."""


def make_store(url: str, acts: NDArray[np.float32], dtype: StorageDtype, codec: Codec, *,
               chunk_bytes: int, shard_bytes: int, writers: int = 1
               ) -> tuple[ActivationStore, float]:
    n = len(acts)
    spec = StoreSpec(model="minilm", hooks=(HOOK,), dataset="builtin:pydoc", context_length=128,
                     tokenizer="minilm", tokenizer_hash=uuid.uuid4().hex, dtype=dtype)
    layout = Layout.for_sizes(n, {HOOK: acts.shape[1]}, dtype, shard_bytes=shard_bytes,
                              chunk_bytes=chunk_bytes, codec=codec)
    store = ActivationStore.create(url, spec, layout)
    # Generation hands the writer tensors already in the storage dtype (the model runs in it),
    # so the cast is not part of what is timed.
    tensor = torch.from_numpy(acts).to(torch_dtype(dtype))
    rows = np.arange(n)

    def write_one(s: int) -> None:
        a, b = layout.shard_rows_range(s)
        idx = RowIndex(rows[a:b] // 128, (rows[a:b] % 128).astype(np.int32),
                       np.zeros(b - a, np.int32))
        write_shard(store, s, {HOOK: tensor[a:b]}, idx, writer_id=f"bench-{s}")

    with ThreadPoolExecutor(writers) as pool:  # generation's writer pool, one shard per thread
        return store, timed(lambda: list(pool.map(write_one, range(layout.num_shards))))


def read_all(store: ActivationStore, readers: int = 1) -> None:
    with ThreadPoolExecutor(readers) as pool:
        list(pool.map(lambda s: store.read_shard(HOOK, s), range(store.num_shards)))


def bench_local(acts: NDArray[np.float32], dtype: StorageDtype, codec: Codec, *,
                chunk_bytes: int, shard_bytes: int, workdir: str, repeats: int,
                threads: int) -> Result:
    """Best of `repeats` for the store and for the raw ceiling, run alternately so that a slow
    spell of the disk hits both sides."""
    raw_arr = stored_values(acts, dtype)
    per = max(1, shard_bytes // raw_arr[0].nbytes)
    blobs = [raw_arr[i:i + per].tobytes() for i in range(0, len(raw_arr), per)]
    best = [np.inf] * 4  # store write, store read, ceiling write, ceiling read
    comp = 0
    for _ in range(repeats):
        url = f"{workdir}/{uuid.uuid4().hex}"
        store, tw = make_store(url, acts, dtype, codec, chunk_bytes=chunk_bytes,
                               shard_bytes=shard_bytes, writers=threads)
        drop_cache(url)
        tr = timed(lambda: read_all(store, threads))  # noqa: B023 (called at once)
        comp = sum(os.path.getsize(os.path.join(d, f)) for folder in (ACTIVATIONS, SCALES)
                   for d, _, fs in os.walk(f"{url}/{folder}") for f in fs
                   if not f.endswith(".json"))
        shutil.rmtree(url)
        cw, cr = local_ceiling(blobs, f"{workdir}/raw-{uuid.uuid4().hex}", threads)
        best = [min(a, b) for a, b in zip(best, (tw, tr, cw, cr), strict=True)]
    raw = raw_arr.nbytes
    return Result("local", codec_name(codec), dtype, chunk_bytes >> 10, raw / comp,
                  raw / best[0] / 1e6, raw / best[1] / 1e6, best[2] / best[0], best[3] / best[1],
                  comp / len(acts))


def stored_values(acts: NDArray[np.float32], dtype: StorageDtype) -> NDArray[np.generic]:
    """The raw array a store of `dtype` holds (8-bit: the codes; scales are 4 bytes a row)."""
    if is_float8(dtype):
        codes: NDArray[np.generic] = quantise(torch.from_numpy(acts), dtype).codes.numpy()
        return codes
    return to_storage(acts, dtype)


def bench_s3(acts: NDArray[np.float32], codec: Codec, chunk_bytes: int,
             shard_bytes: int) -> Result:
    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_ENDPOINT_URL_S3=f"http://{host}:{port}")
    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    try:
        store, tw = make_store("s3://bench/store", acts, "bfloat16", codec,
                               chunk_bytes=chunk_bytes, shard_bytes=shard_bytes)
        tr = timed(lambda: read_all(store))
        raw_bytes = to_storage(acts, "bfloat16")
        per = store.layout.shard_rows
        blobs = [raw_bytes[i:i + per].tobytes() for i in range(0, len(raw_bytes), per)]
        cw = timed(lambda: [fs.pipe_file(f"bench/raw/{i}", b) for i, b in enumerate(blobs)])
        cr = timed(lambda: [fs.cat_file(f"bench/raw/{i}") for i in range(len(blobs))])
        comp = sum(fs.du("bench/store/activations", total=False).values())
    finally:
        server.stop()
    raw = raw_bytes.nbytes
    return Result("s3-moto", codec_name(codec), "bfloat16", chunk_bytes >> 10, raw / comp,
                  raw / tw / 1e6, raw / tr / 1e6, cw / tw, cr / tr)


def codec_speeds(acts: NDArray[np.float32], chunk_bytes: int,
                 dtypes: list[str] | None = None) -> None:
    """Single-thread encode/decode speeds of each codec on the same chunks (the per-core
    bound): CPU time of this thread with blosc held to one thread (it would otherwise add its
    own threads when called from the main thread), beside a plain memory copy of the bytes.
    8-bit codes come from `quantise`; ns/row compares dtypes, whose rows differ in bytes."""
    import numcodecs

    from actstore.store.shard_codec import compressor

    stored = {"bfloat16": to_storage(acts, "bfloat16")}
    for dtype in ("float8_e4m3", "float8_e5m2"):
        if dtypes is None or dtype in dtypes:
            stored[dtype] = quantise(torch.from_numpy(acts), dtype).codes.numpy()
    threads = numcodecs.blosc.get_nthreads()
    numcodecs.blosc.set_nthreads(1)
    try:
        for dtype, raw in stored.items():
            per = max(1, chunk_bytes // raw[0].nbytes)
            chunks = [raw[i:i + per].tobytes() for i in range(0, len(raw), per)]
            t_copy, _ = _thread_seconds(bytearray, chunks)
            print(f"# {dtype}: memory copy {raw.nbytes / t_copy / 1e6:.0f} MB/s")
            for codec in CODECS if dtype == "bfloat16" else FLOAT8_CODECS:
                c = compressor(codec, raw.dtype.itemsize)
                if c is None:
                    continue
                t_enc, encoded = _thread_seconds(c.encode, chunks)
                t_dec, _ = _thread_seconds(c.decode, encoded)
                size = sum(len(e) for e in encoded) / len(raw)
                print(f"# 1 thread {dtype:11} {codec_name(codec):28} {size:6.1f} B/row, "
                      f"encode {raw.nbytes / t_enc / 1e6:5.0f} MB/s, decode "
                      f"{raw.nbytes / t_dec / 1e6:5.0f} MB/s = {1e9 * t_dec / len(raw):4.0f} "
                      f"ns/row ({t_copy / t_enc:.3f}x / {t_copy / t_dec:.3f}x a memory copy)",
                      flush=True)
    finally:
        numcodecs.blosc.set_nthreads(threads)


def _thread_seconds(fn: Callable[[Any], Any], items: list[Any], repeats: int = 3
                    ) -> tuple[float, list[Any]]:
    """Best CPU seconds of this thread over `repeats` passes of fn over items, and the last
    pass's results."""
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.thread_time()
        out = [fn(x) for x in items]
        best = min(best, time.thread_time() - t0)
    return best, out


def codec_name(c: Codec) -> str:
    return f"{c.name}/{c.shuffle}/l{c.level}" if c.name != "none" else "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=128_000)
    p.add_argument("--shard-mib", type=int, default=32)
    p.add_argument("--tile", type=int, default=4,
                   help="repeat the corpus's activations this many times (the pydoc corpus "
                        "gives 128k rows; chunks compress independently, so ratios hold)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="writer/reader threads, for the store and the raw ceiling alike")
    p.add_argument("--workdir", default="bench-out")
    p.add_argument("--s3", action="store_true", help="also measure against a moto S3 server")
    p.add_argument("--dtypes", nargs="+", default=None,
                   help="only these storage dtypes (and the bf16 default, the reference)")
    p.add_argument("--codec-speeds-only", action="store_true",
                   help="only the single-thread encode/decode speeds of each codec")
    args = p.parse_args()
    acts = np.tile(minilm_activations(args.rows), (args.tile, 1))
    codec_speeds(acts[:args.rows], 2 << 20, args.dtypes)
    if args.codec_speeds_only:
        return
    shard_bytes, chunk = args.shard_mib << 20, 2 << 20
    os.makedirs(args.workdir, exist_ok=True)
    workdir = tempfile.mkdtemp(dir=args.workdir)
    runs: list[tuple[StorageDtype, Codec, int]] = [("bfloat16", c, chunk) for c in CODECS]
    runs += [("bfloat16", CODECS[0], kib << 10) for kib in (512, 8192)]
    runs += [("float16", CODECS[0], chunk), ("float32", CODECS[0], chunk)]
    runs += [(dtype, c, chunk) for dtype in ("float8_e4m3", "float8_e5m2") for c in FLOAT8_CODECS]
    runs += [("float8_e4m3", FLOAT8_CODECS[0], kib << 10) for kib in (512, 1024, 4096, 8192)]
    # the bf16 default always runs: the 8-bit stores' bytes per row are compared with it
    runs = [r for i, r in enumerate(runs) if i == 0 or args.dtypes is None or r[0] in args.dtypes]
    results: list[Result] = []
    try:
        for dtype, codec, chunk_bytes in runs:
            results.append(bench_local(acts, dtype, codec, chunk_bytes=chunk_bytes,
                                       shard_bytes=shard_bytes, workdir=workdir,
                                       repeats=args.repeats, threads=args.threads))
            print_row(results[-1])
        if args.s3:
            results.append(bench_s3(acts, CODECS[0], chunk, shard_bytes))
            print_row(results[-1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.workdir, "store_codecs.json").write_text(json.dumps([asdict(r) for r in results],
                                                                  indent=1))


def print_row(r: Result) -> None:
    print(f"{r.backend:8} {r.dtype:11} {r.codec:28} chunk {r.chunk_kib:5d} KiB  "
          f"ratio {r.ratio:4.2f}x  {r.bytes_per_row:6.1f} B/row  "
          f"write {r.write_mbps:7.1f} MB/s ({r.write_vs_ceiling:4.2f}x ceil)"
          f"  read {r.read_mbps:7.1f} MB/s ({r.read_vs_ceiling:4.2f}x ceil)", flush=True)


if __name__ == "__main__":
    main()
