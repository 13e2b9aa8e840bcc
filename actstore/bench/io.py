"""Timing helpers shared by the stages and the benchmark scripts: wall time, the order and
ratios of alternated runs, cold page cache, the raw-disk ceiling, the process's peak
memory."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def timed(fn: Callable[[], object]) -> float:
    """Seconds `fn()` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rotated(items: dict[str, T], round_: int) -> list[tuple[str, T]]:
    """The items starting from number `round_` (mod their count), then the rest in order:
    timed alternately over rounds, no item always runs first (whatever the one before
    leaves, caches or a busier minute, falls on each in turn)."""
    pairs = list(items.items())
    k = round_ % len(pairs) if pairs else 0
    return pairs[k:] + pairs[:k]


def speed_ratios(times: dict[str, list[float]], name: str, reference: str, other: str
                 ) -> dict[str, float]:
    """Speed of `other` over `reference` (a ratio of their seconds), from the best runs and
    from the medians."""
    return {name: min(times[reference]) / min(times[other]),
            f"{name}/median": statistics.median(times[reference])
            / statistics.median(times[other])}


def drop_cache(root: str) -> None:
    """Evict every file under `root` from the page cache (the next read is cold)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def local_ceiling(blobs: list[bytes], root: str, threads: int) -> tuple[float, float]:
    """Seconds to write (with fsync, like a commit) and cold-read the same raw bytes, one file
    per shard, with as many threads as the store gets."""
    os.makedirs(root)

    def write(i: int) -> None:
        with open(f"{root}/{i}.raw", "wb") as f:
            f.write(blobs[i])
            f.flush()
            os.fsync(f.fileno())

    with ThreadPoolExecutor(threads) as pool:
        tw = timed(lambda: list(pool.map(write, range(len(blobs)))))
        drop_cache(root)
        tr = timed(lambda: list(pool.map(lambda i: np.fromfile(f"{root}/{i}.raw", np.uint8),
                                         range(len(blobs)))))
    shutil.rmtree(root)
    return tw, tr


def read_files(files: list[str]) -> None:
    """Read files sequentially with plain reads (the ceiling of a store's reads)."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Reset the resident-set high-water mark to the current RSS (Linux); returns it."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_bytes("VmRSS")
