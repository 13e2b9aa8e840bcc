"""One generation worker: loads the model once, then turns shards into committed shards.

A shard is a range of rows in context order; the worker runs every context that overlaps it
(a context cut by a shard boundary is run by both shards, each keeping its own rows), keeps
the non-padded, stored positions, shuffles the rows with a seed derived from the store key and
the shard (so a retried shard is bit-identical), and writes them with `write_shard`.
Compute and I/O overlap: the model runs under a lock, so with two calls in flight (Ray actor
`max_concurrency=2`) one shard computes while the previous one compresses and uploads.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from actstore.model.capture import Capture, load_model
from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore, RowIndex, stored_row_counts
from actstore.store.errors import FormatError, ShardLeaseError
from actstore.store.lock import holder_is_dead, read_lock
from actstore.store.quant.float8 import NonFiniteRowsError, quantise_on_device
from actstore.store.spec import derived_seed
from actstore.store.stats import RowSums
from actstore.store.writer import QuantisedRows, write_shard


@dataclass(frozen=True)
class ContextRows:
    """Where each context's stored rows sit in context order (before the in-shard shuffle)."""

    tokens: list[NDArray[np.int32]]
    """Model input of each context (row i of the contexts table)."""
    context_ids: NDArray[np.int64]
    """context_id of each context."""
    starts: NDArray[np.int64]
    """First stored position of each context."""
    offsets: NDArray[np.int64]
    """Row offset of each context's first stored row; offsets[-1] = total rows."""

    @classmethod
    def of(cls, store: ActivationStore) -> ContextRows:
        table = store.read_contexts(["context_id", "start", "tokens"])
        tokens = [np.asarray(t, dtype=np.int32) for t in table.column("tokens").to_pylist()]
        starts = table.column("start").to_numpy().astype(np.int64)
        return cls(tokens, table.column("context_id").to_numpy().astype(np.int64), starts,
                   np.concatenate([[0], np.cumsum(stored_row_counts(table))]))

    def contexts_of(self, a: int, b: int) -> range:
        """Indices of the contexts with stored rows in [a, b)."""
        first = int(np.searchsorted(self.offsets, a, side="right")) - 1
        last = int(np.searchsorted(self.offsets, b, side="left"))
        return range(first, last)


class ShardCancelledError(RuntimeError):
    """`ShardWorker.cancel` stopped this shard before it was written."""


def _exit_with(driver: dict[str, Any]) -> None:
    """Exit this worker process once the driver (a process of this host) is gone."""
    while not holder_is_dead(driver):
        time.sleep(1.0)
    os._exit(1)


def shard_permutation(key: str, shard: int, n: int) -> NDArray[np.int64]:
    return np.random.default_rng(derived_seed(key, shard)).permutation(n)


class ShardWorker:
    """Holds the model; `process(shard)` computes and commits one shard."""

    def __init__(self, store_url: str, *, model: str, revision: str | None, model_dtype: str,
                 device: str, batch_size: int, job_id: str,
                 storage_options: dict[str, Any] | None = None,
                 driver: dict[str, Any] | None = None, threads: int | None = None) -> None:
        if threads is not None and torch.device(device).type == "cpu":
            torch.set_num_threads(threads)  # the CPUs this worker reserved in Ray
        self.store = ActivationStore.open(store_url, storage_options=storage_options)
        self.rows = ContextRows.of(self.store)
        self.device = torch.device(device)
        self.model = load_model(model, revision, getattr(torch, model_dtype), self.device)
        self.capture = Capture(self.model, self.store.hooks)
        self.batch_size = batch_size
        self.quantise_here = fmt.is_float8(self.store.spec.dtype) and self.device.type == "cuda"
        """8-bit store on a GPU: each batch is quantised on the GPU and only codes and scales
        cross to the host (a quarter of the float32 bytes; the CPU quantises nothing). Tests
        set it on a CPU, where the writer quantises otherwise, to check it makes the same
        shard."""
        self.job_id, self.writer_id = job_id, f"{job_id}/{os.getpid()}"
        self._compute_lock = threading.Lock()
        self._cancelled = threading.Event()
        if driver is not None:  # a worker outlives a killed driver only by a second
            threading.Thread(target=_exit_with, args=(driver,), daemon=True,
                             name="actstore-driver-watch").start()

    def ready(self) -> bool:
        """True: the model is loaded (a Ray actor answers once its constructor returned)."""
        return True

    def process(self, shard: int) -> int:
        """Compute and commit `shard`; returns its number of rows."""
        with self._compute_lock:
            activations, index = self.compute(shard)
        # The job that asked for this shard still holds the store (a job on another host
        # whose driver died loses its lock when the lease expires): else write nothing.
        held = read_lock(self.store.location)
        if held is None or held.get("job") != self.job_id:
            raise ShardLeaseError(f"job {self.job_id!r} no longer holds the lock of "
                                  f"{self.store.url} (now {held}); shard {shard} not written")
        write_shard(self.store, shard, activations, index, writer_id=self.writer_id)
        return len(index.context)

    def cancel(self) -> None:
        """Stop computing at the next batch (an in-process run stopped by an error or
        Ctrl-C: its threads must not run a whole shard first)."""
        self._cancelled.set()

    def compute(self, shard: int) -> tuple[dict[str, torch.Tensor | QuantisedRows], RowIndex]:
        """Rows of `shard`, shuffled, and its row index: {hook: (rows, d) in the storage dtype
        on the CPU}, or for an 8-bit store on a GPU {hook: QuantisedRows}."""
        a, b = self.store.layout.shard_rows_range(shard)
        ctx = self.rows.contexts_of(a, b)
        lo = a - int(self.rows.offsets[ctx[0]])  # the shard's rows: [lo, lo + b - a) of the run
        parts: dict[str, list[Any]] = {h: [] for h in self.store.hooks}
        sums = {h: RowSums() for h in self.store.hooks}
        done = 0
        for i in range(0, len(ctx), self.batch_size):
            if self._cancelled.is_set():
                raise ShardCancelledError(f"shard {shard}: the run was stopped")
            out = self._run_batch(list(ctx[i:i + self.batch_size]))
            width = len(next(iter(out.values())))
            kept = slice(min(max(lo - done, 0), width), min(max(lo + b - a - done, 0), width))
            done += width
            for hook, rows in out.items():
                parts[hook].append(self._quantised(rows[kept], sums[hook])
                                   if self.quantise_here else self._to_host(rows))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the copies have landed
        perm = torch.from_numpy(shard_permutation(self.store.key, shard, b - a))
        index = self._index(ctx, lo, b - a)
        acts: dict[str, torch.Tensor | QuantisedRows] = {
            h: self._shard_rows(h, shard, p, sums[h], perm) if self.quantise_here
            else torch.cat(p)[lo:lo + b - a][perm] for h, p in parts.items()}
        return acts, RowIndex(*(col[perm.numpy()] for col in index))

    def _shard_rows(self, hook: str, shard: int, parts: list[Any], sums: RowSums,
                    perm: torch.Tensor) -> QuantisedRows:
        """A hook's quantised rows of the shard, shuffled; raises on non-finite rows."""
        nonfinite = int(sum(int(bad) for _, _, bad in parts))
        if nonfinite:
            raise FormatError(f"hook {hook}: shard {shard}: {NonFiniteRowsError(nonfinite)}")
        codes = torch.cat([c for c, _, _ in parts])[perm]
        scales = torch.cat([s for _, s, _ in parts])[perm]
        return QuantisedRows(codes, scales, sums.stats(self.store.layout.d_model[hook]))

    def _quantised(self, rows: torch.Tensor, sums: RowSums
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch's kept rows quantised where they are; codes and scales copied to the host
        (a byte per value crosses PCIe), statistics summed on the device."""
        q = quantise_on_device(rows, self.store.spec.dtype)
        sums.add(rows, q.sq_error)
        return self._to_host(q.codes), self._to_host(q.scales), q.nonfinite

    def _run_batch(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """Stored rows of these contexts, in context order, on the model's device: cast to
        the storage dtype there (8-bit stores: the exact float rows)."""
        seqs = [self.rows.tokens[c] for c in batch]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for j, s in enumerate(seqs):  # right padding; padded positions are never stored
            ids[j, :len(s)] = torch.from_numpy(s)
            mask[j, :len(s)] = 1
        # No mask when nothing is padded (packed contexts): attention then takes its fast path
        # (SDPA without a mask; flash attention on GPU).
        padded = any(len(seq) < width for seq in seqs)
        out = self.capture.run(ids.to(self.device), mask.to(self.device) if padded else None)
        keep = torch.zeros(len(seqs), width, dtype=torch.bool)
        for j, c in enumerate(batch):
            keep[j, int(self.rows.starts[c]):len(seqs[j])] = True
        keep = keep.to(self.device)
        if fmt.is_float8(self.store.spec.dtype):
            # Quantised and measured against these exact rows (here or in the writer): no cast.
            return {h: v[keep] for h, v in out.items()}
        dtype = fmt.torch_dtype(self.store.spec.dtype)
        return {h: v[keep].to(dtype) for h, v in out.items()}  # cast on the device

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        """`t` on the CPU. From a GPU: into pinned memory without waiting, so the host thread
        goes on queuing forward passes; `compute` syncs once per shard."""
        if self.device.type != "cuda":
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _index(self, ctx: range, lo: int, n: int) -> RowIndex:
        cids, pos, tok = [], [], []
        for c in ctx:
            positions = np.arange(self.rows.starts[c], len(self.rows.tokens[c]))
            cids.append(np.full(len(positions), self.rows.context_ids[c], dtype=np.int64))
            pos.append(positions.astype(np.int32))
            tok.append(self.rows.tokens[c][positions])
        return RowIndex(np.concatenate(cids)[lo:lo + n], np.concatenate(pos)[lo:lo + n],
                        np.concatenate(tok)[lo:lo + n])
