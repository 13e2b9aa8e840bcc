"""Shuffled, resumable, rank-split batches from a store, read ahead by a pool of threads.

Per epoch (see `EpochPlan`):
  chunks of the store ──seeded permutation──▶ one global row order
      ──split──▶ rank r gets rows [r*R, (r+1)*R), R = N // world_size (same steps on every rank)
      ──windows of `shuffle_buffer` rows, each fully permuted (seed, epoch, rank, window):
        each chunk run is decoded into a per-thread buffer and scattered to its permuted
        slots──▶ batches of `batch_size` rows = consecutive slices of the permuted window.
Rows inside shards were already shuffled at write time, so a window of randomly chosen chunks
mixes contexts from all over the store. The position is (epoch, rows consumed): resuming
rebuilds the current window and skips what was consumed, so the next batch is bit-identical.
Every row is delivered exactly once per epoch across ranks, except the N % world_size rows
(< world_size) cut so that every rank runs the same number of steps; `drop_last` also drops
each rank's final short batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from actstore.loader.buffers import BufferPool
from actstore.loader.delivery import Normalizer, on_cpu, on_cuda
from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore
from actstore.store.spec import derived_seed

STATE_VERSION = 1
Run = tuple[int, int, NDArray[np.int64]]
"""Consecutive store rows [start, stop) of a window, and the window slots they go to."""
SPAN_SLACK = 2
"""An 8-bit hook's row scales in a shard are read as one span when it is at most this many
times the rows needed (see `Loader._read_scales`)."""


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are drawn from a store."""

    hooks: tuple[str, ...]
    """Hooks to load; batches hold one tensor per hook, rows aligned."""
    batch_size: int = 4096
    """Rows per batch on each rank."""
    seed: int = 0
    """Seed of the chunk permutation and the window shuffles."""
    shuffle_buffer: int = 1 << 18
    """Rows shuffled together (a window); larger mixes better and costs memory."""
    prefetch_windows: int = 2
    """Windows read ahead of the consumer."""
    read_threads: int = 4
    """Threads reading and decoding chunks (I/O and decompression release the GIL)."""
    device: str = "cpu"
    """Where batches are delivered; on cuda they come through pinned memory."""
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Dtype of delivered batches, converted on the device (None: the store's dtype)."""
    normalize: Literal["none", "scale", "center_scale"] = "none"
    """From the store's statistics: scale so E||x||^2 = d_model, optionally centering first."""
    drop_last: bool = False
    """Drop each rank's final short batch of an epoch."""
    with_rows: bool = False
    """Also deliver the store row numbers of each batch (for tracing and shuffle quality)."""
    shards: tuple[int, ...] | None = None
    """Read only these shards (None: all of them): how a held-out slice is kept out of
    training (see `actstore.loader.holdout`)."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("LoaderConfig needs at least one hook")
        if self.batch_size < 1 or self.shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be >= 1")
        if self.shuffle_buffer % self.batch_size:
            raise ValueError(f"shuffle_buffer ({self.shuffle_buffer}) must be a multiple of "
                             f"batch_size ({self.batch_size}), so batches never straddle "
                             "two windows")
        if self.prefetch_windows < 1 or self.read_threads < 1:
            raise ValueError("prefetch_windows and read_threads must be >= 1")
        if self.shards is not None and not self.shards:
            raise ValueError("LoaderConfig.shards is empty: name at least one shard, or None")


class Batch(NamedTuple):
    """One batch on one rank."""

    x: dict[str, torch.Tensor]
    """Hook -> (rows, d_model) tensor on the configured device and dtype."""
    rows: torch.Tensor | None
    """Store row number of each row (when `with_rows`), on the CPU."""


class EpochPlan:
    """The row order of one rank in one epoch, as (chunk, offset) runs: pure arithmetic."""

    def __init__(self, store: ActivationStore, seed: int, epoch: int, rank: int,
                 world_size: int, *, shards: tuple[int, ...] | None = None) -> None:
        chunks = selected_chunks(store, shards)
        n, c = store.num_rows, store.layout.chunk_rows
        order = chunks[np.random.default_rng(derived_seed(seed, epoch)).permutation(len(chunks))]
        sizes = np.minimum(c, n - order * c)
        self.chunk_order, self.chunk_start = order, np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.chunk_start[-1]) // world_size
        self.begin = rank * self.rows  # rank's slice of the global order
        self.chunk_rows = c

    def rows_of(self, lo: int, hi: int) -> NDArray[np.int64]:
        """Store row numbers at positions [lo, hi) of this rank's stream (before shuffling)."""
        g_lo, g_hi = self.begin + lo, self.begin + hi
        first = int(np.searchsorted(self.chunk_start, g_lo, side="right")) - 1
        last = int(np.searchsorted(self.chunk_start, g_hi, side="left"))
        parts = [self.chunk_order[k] * self.chunk_rows + np.arange(
            max(g_lo, self.chunk_start[k]) - self.chunk_start[k],
            min(g_hi, self.chunk_start[k + 1]) - self.chunk_start[k]) for k in range(first, last)]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def selected_chunks(store: ActivationStore, shards: tuple[int, ...] | None
                    ) -> NDArray[np.int64]:
    """Chunk numbers of the given shards (all chunks when None), ascending."""
    c, n = store.layout.chunk_rows, store.num_rows
    if shards is None:
        return np.arange(-(-n // c), dtype=np.int64)
    _check_shards(store, shards)
    per = store.layout.shard_rows // c
    parts = [np.arange(s * per, -(-store.layout.shard_rows_range(s)[1] // c), dtype=np.int64)
             for s in sorted(set(shards))]
    return np.concatenate(parts)


def _check_shards(store: ActivationStore, shards: tuple[int, ...]) -> None:
    bad = sorted(s for s in set(shards) if not 0 <= s < store.num_shards)
    if bad:
        raise ValueError(f"shards {bad} are not in store {store.url} (it has "
                         f"{store.num_shards} shards)")


def selected_rows(store: ActivationStore, shards: tuple[int, ...] | None) -> int:
    """Rows in the given shards (all rows when None)."""
    if shards is None:
        return store.num_rows
    _check_shards(store, shards)
    return sum(b - a for a, b in map(store.layout.shard_rows_range, set(shards)))


class Loader:
    """Iterate `Batch`es for rank `rank` of `world_size`; `state_dict()` marks the position."""

    def __init__(self, config: LoaderConfig, *, store: ActivationStore, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        missing = [h for h in config.hooks if h not in store.layout.d_model]
        if missing:
            raise KeyError(f"hooks {missing} are not in store {store.url}; it has "
                           f"{list(store.hooks)}")
        store.require_complete()
        self.total_rows = selected_rows(store, config.shards)
        if self.total_rows // world_size == 0:
            raise ValueError(f"{self.total_rows} rows cannot feed {world_size} ranks")
        self.config, self.store, self.rank, self.world_size = config, store, rank, world_size
        self.epoch, self.consumed = 0, 0
        # from the shards read only: a held-out slice leaks nothing into training
        self._scale = {h: Normalizer.of(store, h, config.normalize, config.shards)
                       for h in config.hooks}
        self._scratch = threading.local()  # per read thread: a chunk-sized decode buffer
        # per hook (hooks of one width share a kind): windows being read, queued and
        # consumed, and one a consumer may still hold
        self._windows = BufferPool(config.shuffle_buffer,
                                   (config.prefetch_windows + 2) * len(config.hooks))

    def normalizer(self, hook: str) -> Normalizer:
        """How batches of `hook` were normalised (to undo it, or to treat other data alike)."""
        return self._scale[hook]

    # --- position ------------------------------------------------------------------------

    @property
    def rows_per_epoch(self) -> int:
        """Rows this rank delivers per epoch."""
        rows = self.total_rows // self.world_size
        return rows - rows % self.config.batch_size if self.config.drop_last else rows

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return int(-(-self.rows_per_epoch // self.config.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed": self.consumed,
                "world_size": self.world_size, "rank": self.rank, "seed": self.config.seed,
                "batch_size": self.config.batch_size,
                "shuffle_buffer": self.config.shuffle_buffer, "store_key": self.store.key,
                "shards": None if self.config.shards is None else sorted(self.config.shards)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position; refuses a state that would not replay the same batches."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} is not "
                             f"{STATE_VERSION}")
        mine = self.state_dict()
        for key in ("world_size", "rank", "seed", "batch_size", "shuffle_buffer", "store_key",
                    "shards"):
            if state.get(key) != mine[key]:  # states from before `shards` have none
                raise ValueError(f"loader state was saved with {key}={state.get(key)!r}, this "
                                 f"loader has {key}={mine[key]!r}: the batches would differ "
                                 "(resume with the same world size and settings)")
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    # --- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """Batches from the current position to the end of the epoch; then the next epoch
        starts at the next call."""
        if self.consumed >= self.rows_per_epoch:
            self.epoch, self.consumed = self.epoch + 1, 0
        plan = EpochPlan(self.store, self.config.seed, self.epoch, self.rank, self.world_size,
                         shards=self.config.shards)
        for rows, x in self._produce(plan, self.consumed):
            batch = self._deliver(x, rows)
            self.consumed += len(rows)
            yield batch

    def _produce(self, plan: EpochPlan, start: int
                 ) -> Iterator[tuple[NDArray[np.int64], dict[str, tuple[torch.Tensor, ...]]]]:
        """(rows, host tensors) per batch, from windows read ahead by a background thread."""
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.config.prefetch_windows)
        stop = threading.Event()
        thread = threading.Thread(target=self._read_windows, args=(plan, start, ready, stop),
                                  daemon=True, name="actstore-loader")
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.05)

    def _read_windows(self, plan: EpochPlan, start: int, ready: queue.Queue[Any],
                      stop: threading.Event) -> None:
        """Producer thread: windows from the one holding `start`, cut into batches.

        The next window's chunks are being decoded and scattered (pool threads) while this
        one's batches are consumed. Batches on the CPU are slices of the window's buffer:
        keeping one keeps its window alive (clone it to keep it longer).
        """
        b, w, end = self.config.batch_size, self.config.shuffle_buffer, self.rows_per_epoch
        starts = list(range(start - start % w, end, w))
        try:
            with ThreadPoolExecutor(self.config.read_threads,
                                    thread_name_prefix="actstore-read") as pool:
                # The whole window is read even past `end` (drop_last), so that its
                # permutation, and so every batch, is the same either way.
                pending = self._read_window(plan, pool, starts[0]) if starts else None
                for i, w0 in enumerate(starts):
                    if stop.is_set() or pending is None:
                        return
                    rows, data, futures = pending
                    for f in futures:
                        f.result()  # raises a read error (corrupt chunk) here
                    pending = (self._read_window(plan, pool, starts[i + 1])
                               if i + 1 < len(starts) else None)
                    batches = []  # rows are already in shuffled order: batches are slices
                    for a in range(max(start, w0), min(w0 + w, end), b):
                        cut = slice(a - w0, min(a + b, end) - w0)
                        batches.append((rows[cut], {h: tuple(p[cut] for p in v)
                                                    for h, v in data.items()}))
                    ready.put(batches)
            ready.put(None)
        except BaseException as e:  # handed to the consumer, raised in its thread
            ready.put(e)

    def _read_window(self, plan: EpochPlan, pool: ThreadPoolExecutor, w0: int
                     ) -> tuple[NDArray[np.int64], dict[str, tuple[torch.Tensor, ...]],
                                list[Any]]:
        """Start decoding a window's chunk runs straight into their shuffled places, one
        buffer per hook; returns the window's rows in shuffled order, the buffers and the
        futures to wait for.

        Slot s of the window holds stream position perm[s]. Each run is decoded into a small
        cache-resident buffer and scattered to its slots from there, by the pool threads; so
        the shuffle costs no separate pass over the window, and batches are slices of it.
        """
        rows = plan.rows_of(w0, min(w0 + self.config.shuffle_buffer, plan.rows))
        perm = np.random.default_rng(
            derived_seed(self.config.seed, self.epoch, self.rank, w0)).permutation(len(rows))
        slot = np.empty_like(perm)
        slot[perm] = np.arange(len(perm))
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        # runs of consecutive store rows: [start, stop) and the slots they go to
        runs = [(int(rows[a]), int(rows[b - 1]) + 1, slot[a:b])
                for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)], strict=True)]
        data, futures = {}, []
        # 8-bit stores: each row's scale travels with its codes (same slots), dequantised
        # only on the delivery device.
        float8 = fmt.is_float8(self.store.spec.dtype)
        for hook in self.config.hooks:
            dec = self.store.decoders[fmt.activation_path(hook)]
            buffers = [self._windows.take(len(rows), dec.row_shape, dec.dtype)]
            futures += [pool.submit(self._read_scattered, hook, a, b, buffers[0], slots)
                        for a, b, slots in runs]
            if float8:
                buffers.append(self._windows.take(len(rows), (), np.float32))
                futures += [pool.submit(self._read_scales, hook, group, buffers[1])
                            for group in self._by_shard(runs)]
            data[hook] = tuple(torch.from_numpy(buf) for buf in buffers)
        return rows[perm], data, futures

    def _by_shard(self, runs: list[Run]) -> list[list[Run]]:
        """Runs grouped by the shard each starts in (a run may go on into the next: its
        scales are then read across the two)."""
        groups: dict[int, list[Run]] = {}
        for run in runs:
            groups.setdefault(run[0] // self.store.layout.shard_rows, []).append(run)
        return list(groups.values())

    def _read_scattered(self, hook: str, start: int, stop: int, buf: NDArray[Any],
                        slots: NDArray[np.int64]) -> None:
        """Rows [start, stop) of the store into buf[slots], through a per-thread buffer."""
        temp: NDArray[Any] | None = getattr(self._scratch, hook, None)
        if temp is None or len(temp) < stop - start:
            temp = np.empty((max(stop - start, self.store.layout.chunk_rows), *buf.shape[1:]),
                            dtype=buf.dtype)
            setattr(self._scratch, hook, temp)
        self.store.read_into(hook, start, stop, temp[:stop - start])
        _whole_rows(buf)[slots] = _whole_rows(temp[:stop - start])

    def _read_scales(self, hook: str, runs: list[Run], buf: NDArray[np.float32]) -> None:
        """The row scales of runs starting in one shard into buf[slots]: in one read of the
        span from the first to the last run when they fill at least half of it (a scale is
        4 bytes, so decoding the few chunks between costs less than a request and a decode
        call each: `benchmarks/loader_parts.py`), else one read per run."""
        lo, hi = min(r[0] for r in runs), max(r[1] for r in runs)
        dense = hi - lo <= SPAN_SLACK * sum(r[1] - r[0] for r in runs)
        reads = [(lo, hi, runs)] if dense else [(a, b, [(a, b, s)]) for a, b, s in runs]
        for start, stop, members in reads:
            span = np.empty(stop - start, np.float32)
            self.store.read_scales_into(hook, start, stop, span)
            for a, b, slots in members:
                buf[slots] = span[a - start:b - start]

    def _deliver(self, x: dict[str, tuple[torch.Tensor, ...]], rows: NDArray[np.int64]
                 ) -> Batch:
        cfg = self.config
        device = torch.device(cfg.device)
        want = fmt.torch_dtype(cfg.dtype) if cfg.dtype else None
        stored = self.store.spec.dtype
        out = {hook: on_cuda(host, stored, self._scale[hook], want, device)
               if device.type == "cuda" else on_cpu(host, stored, self._scale[hook], want)
               for hook, host in x.items()}
        return Batch(out, torch.from_numpy(rows) if cfg.with_rows else None)


def _whole_rows(a: NDArray[Any]) -> NDArray[Any]:
    """A C-contiguous (n, ...) array as n opaque items of one row each: numpy then copies a
    selected row with one memcpy rather than an element loop (`benchmarks/loader_parts.py`)."""
    if a.ndim == 1:
        return a
    return a.view(np.dtype((np.void, a.strides[0]))).reshape(len(a))
