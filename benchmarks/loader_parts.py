"""Where a loader epoch's CPU goes, bf16 store against e4m3, in one process.

    python -m benchmarks.loader_parts [--rows 1048576] [--rounds 3] [--tokens 32768]
                                      [--normalize none|scale|center_scale]
                                      [--e4m3-codecs blosc-zstd:3:bitshuffle ...]

The MiniLM `encoder.layer.3` stores of `fp8_store.py` (bf16 and e4m3, generated from the same
contexts) are tiled to `--rows` rows; each round runs one warm epoch of each (one loader per
store for all rounds, as a trainer runs one) at the loader's defaults (batches of 4,096, a
262,144-row shuffle window, 4 read threads), delivering float32 batches as the trainer asks
(normalised by `--normalize`: none by default, the loader's; the trainer's is scale), with the
loader's and the store's methods wrapped to add up their own CPU time (`time.thread_time`, less
the wrapped methods they call, in whichever thread runs them: `WRAPPED`): decoding chunks (crc
and decompression, whether the reading thread or the store's pool does it), the rest of reading
chunks (requests, index, checks), the row scales of an 8-bit store (read, decoded, placed),
scattering decoded rows into the shuffled window, and delivery (the bf16 widening or the
dequantisation). The e4m3 store is also tiled with each of `--e4m3-codecs` (by default the
previous default codec) and timed in the same rounds (which store goes first rotates).
Prints nanoseconds of CPU per row for each stage (best round), the epoch's wall and process
CPU time, and each store's ratios to bf16; writes `<out>/loader_parts.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actstore import ActivationStore
from actstore.bench.io import rotated
from actstore.bench.storage import tiled_store
from actstore.loader.loader import Loader
from actstore.store.shard_codec import ShardDecoder
from actstore.store.spec import Codec
from benchmarks.fp8_store import MINILM, MINILM_HOOK, epoch_fn, generate_stores
from benchmarks.store_codecs import codec_name

DTYPES = ("bfloat16", "float8_e4m3")

#: (method, owner, stage or a function of the instance giving the stage). Each stage counts
#: the method's own CPU time, in whichever thread runs it, less the wrapped methods it calls
#: in that thread: a chunk decoded by the store's pool is counted once, as decoding.
WRAPPED: tuple[tuple[str, type, str | Callable[[Any], str]], ...] = (
    ("_decode_chunk", ShardDecoder,
     lambda dec: "row scales" if dec.row_shape == () else "decode chunks"),
    ("read_into", ActivationStore, "read chunks (requests, checks)"),
    ("read_scales_into", ActivationStore, "row scales"),
    ("_read_scales", Loader, "row scales"),
    ("_read_scattered", Loader, "scatter into the window"),
    ("_deliver", Loader, "deliver (widen or dequantise)"))
STAGES = ("decode chunks", "read chunks (requests, checks)", "row scales",
          "scatter into the window", "deliver (widen or dequantise)")


@contextmanager
def stage_clock() -> Iterator[dict[str, float]]:
    """CPU seconds of each stage while inside (see `WRAPPED`)."""
    spent: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    lock, local = threading.Lock(), threading.local()
    saved = {(name, owner): getattr(owner, name) for name, owner, _ in WRAPPED}

    def wrap(fn: Callable[..., Any], stage: str | Callable[[Any], str]) -> Callable[..., Any]:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            nested = getattr(local, "stack", None)
            if nested is None:
                nested = local.stack = []
            nested.append(0.0)  # CPU of wrapped calls made from this one, in this thread
            t0 = time.thread_time()
            try:
                return fn(self, *args, **kwargs)
            finally:
                took = time.thread_time() - t0
                own = took - nested.pop()
                if nested:
                    nested[-1] += took
                with lock:
                    spent[stage if isinstance(stage, str) else stage(self)] += own
        return timed
    for name, owner, stage in WRAPPED:
        setattr(owner, name, wrap(saved[name, owner], stage))
    try:
        yield spent
    finally:
        for (name, owner), fn in saved.items():
            setattr(owner, name, fn)


def one_epoch(epoch: Callable[[], int], rows: int) -> dict[str, float]:
    """ns of CPU per row by stage, and the epoch's wall and CPU ns per row."""
    with stage_clock() as spent:
        wall, cpu = time.perf_counter(), time.process_time()
        assert epoch() == rows
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    per_row = {**spent, "epoch CPU, all threads": cpu, "epoch wall": wall}
    return {k: 1e9 * v / rows for k, v in per_row.items()}


def parse_codec(text: str) -> Codec:
    """`name:level:shuffle`, e.g. `blosc-zstd:3:bitshuffle`."""
    name, level, shuffle = text.split(":")
    return Codec(name, int(level), shuffle)  # type: ignore[arg-type]  # Codec refuses others


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32768, help="MiniLM tokens generated")
    p.add_argument("--normalize", choices=("none", "scale", "center_scale"), default="none",
                   help="the loader's normalisation (the trainer's default is scale)")
    p.add_argument("--e4m3-codecs", nargs="*", type=parse_codec,
                   default=[Codec("blosc-zstd", 3, "bitshuffle")],
                   help="also time the e4m3 store compressed with these (name:level:shuffle; "
                        "default: the previous default, blosc-zstd:3:bitshuffle)")
    p.add_argument("--out", default="bench-out")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.out) as tmp:
        work = Path(tmp)
        stores = generate_stores(MINILM, MINILM_HOOK, a.tokens, work, 128)
        plan: dict[str, tuple[str, Codec | None]] = {d: (d, None) for d in DTYPES}
        plan.update({f"e4m3 {codec_name(c)}": ("float8_e4m3", c) for c in a.e4m3_codecs})
        tiled = {name: tiled_store(str(work / f"tiled-{i}"), stores[d], a.rows,
                                   min(4, os.cpu_count() or 1), codec)[0]
                 for i, (name, (d, codec)) in enumerate(plan.items())}
        # one loader per store, as a trainer runs one; its first epoch warms the page
        # cache, its buffers and the compiled kernels
        epochs = {name: epoch_fn(store, a.normalize) for name, store in tiled.items()}
        for epoch in epochs.values():
            epoch()
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in tiled}
        for r in range(a.rounds):
            for name, epoch in rotated(epochs, r):  # none always first
                rounds[name].append(one_epoch(epoch, a.rows))
    best = {name: min(r, key=lambda x: x["epoch wall"]) for name, r in rounds.items()}
    print_table(best, a)
    Path(a.out, "loader_parts.json").write_text(json.dumps(
        {"args": {**vars(a), "e4m3_codecs": [codec_name(c) for c in a.e4m3_codecs]},
         "rounds": rounds, "best": best}, indent=1) + "\n")


def print_table(best: dict[str, dict[str, float]], a: argparse.Namespace) -> None:
    """Stages by store, each with its ratio to the bf16 store's."""
    print(f"ns of CPU per row, warm epoch of {a.rows:,} rows, float32 batches, normalize "
          f"{a.normalize} (best of "
          f"{a.rounds}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    others = [n for n in best if n != "bfloat16"]
    print("| stage | bf16 | " + " | ".join(f"{n} | / bf16" for n in others) + " |")
    print("| --- " * (2 + 2 * len(others)) + "|")
    for stage, b in best["bfloat16"].items():
        cells = [f"{best[n][stage]:.0f} | {best[n][stage] / b if b else float('nan'):.2f}"
                 for n in others]
        print(f"| {stage} | {b:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
