"""Writing a store: one whole shard at a time, committed by a marker written after its data.

Protocol for one shard (what makes Ray retries idempotent and concurrent writers safe):
1. lease: create `leases/shard-N/zarr.json` exclusively; a second writer of the shard is refused
   with the owner's name. A committed shard is refused outright: it is never rewritten.
2. write: each array's shard is encoded in memory and published with one atomic put (rename on
   local disk after fsync, a single PUT on object stores): readers never see a torn shard.
3. commit: create `commits/shard-N/zarr.json` exclusively, holding each object's size and crc32c
   and the shard's statistics; then drop the lease. Data is durable before the marker exists, so
   a marker always means "all of this shard is there".
A crashed writer leaves a lease and maybe objects but no marker: the shard is not done, and the
job that knows the writer is dead breaks the lease and retries the shard elsewhere.
One job at a time: `JobLock` (`lock/zarr.json`, a lease renewed by a heartbeat) refuses a
second job while the first is alive.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore, RowIndex, disk_full
from actstore.store.errors import (
    FormatError,
    ShardCommittedError,
    ShardLeaseError,
)
from actstore.store.lock import group_bytes, owner, read_attrs
from actstore.store.quant import quantise
from actstore.store.shard_codec import run_in_pool
from actstore.store.stats import HookStats


class QuantisedRows(NamedTuple):
    """One hook's rows of a shard for an 8-bit store, quantised where they were computed
    (`quant.quantise_on_device`), with the statistics of the exact rows they came from: what a
    GPU worker hands the writer instead of the float32 rows."""

    codes: torch.Tensor
    """(rows, d_model) uint8 on the CPU."""
    scales: torch.Tensor
    """(rows,) float32 on the CPU."""
    stats: HookStats
    """Of the exact rows, with `mean_sq_error` (the shard's noise floor)."""


class ShardWriter:
    """Writes and commits one shard. Use as a context manager: the lease is dropped on error."""

    def __init__(self, store: ActivationStore, shard: int, writer_id: str) -> None:
        self.store, self.shard, self.writer_id = store, shard, writer_id
        self.rows = store.layout.shard_rows_range(shard)
        self._objects: dict[str, dict[str, int]] = {}
        self._stats: dict[str, dict[str, Any]] = {}
        self._leased = False

    @property
    def _lease_key(self) -> str:
        return fmt.marker_key(fmt.LEASES, self.shard)

    def __enter__(self) -> ShardWriter:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._leased:
            self.release()

    def acquire(self) -> None:
        """Take the shard's lease, or raise naming who holds it / that it is committed."""
        loc = self.store.location
        if loc.exists(fmt.marker_key(fmt.COMMITS, self.shard)):
            raise ShardCommittedError(f"shard {self.shard} of {self.store.url} is committed")
        lease = {"writer": self.writer_id, "acquired_at": time.time(), **owner()}
        try:
            loc.put_exclusive(self._lease_key, group_bytes(lease))
        except FileExistsError:
            held = read_attrs(loc, self._lease_key) or {}
            raise ShardLeaseError(
                f"shard {self.shard} of {self.store.url} is being written by writer "
                f"{held.get('writer')!r} (host {held.get('host')}, pid {held.get('pid')}); "
                "if it is dead, break its lease with ActivationStore.break_lease") from None
        self._leased = True

    def release(self) -> None:
        """Drop the lease if it is still ours (after a commit, or to give the shard up)."""
        held = read_attrs(self.store.location, self._lease_key)
        if held is not None and held.get("writer") == self.writer_id:
            self.store.location.delete(self._lease_key)
        self._leased = False

    def write(self, activations: Mapping[str, Any], index: RowIndex) -> None:
        """Write every hook's rows and the row index of the whole shard, in one durable batch."""
        start, stop = self.rows
        n = stop - start
        if set(activations) != set(self.store.hooks):
            raise FormatError(f"shard needs hooks {list(self.store.hooks)}, "
                              f"got {sorted(activations)}")
        arrays: dict[str, NDArray[Any]] = {}
        stats: dict[str, Future[HookStats]] = {}
        for hook, values in activations.items():
            want = (n, self.store.layout.d_model[hook])
            shape = values.codes.shape if isinstance(values, QuantisedRows) else np.shape(values)
            if tuple(shape) != want:
                raise FormatError(f"hook {hook}: shard {self.shard} needs shape {want}, "
                                  f"got {tuple(shape)}")
            arrays.update(self._encode_rows(hook, values, stats))
        for name, values in zip(fmt.INDEX_ARRAYS, index, strict=True):
            column = np.asarray(values, dtype=fmt.INDEX_ARRAYS[name])
            if column.shape != (n,):
                raise FormatError(f"index {name}: shard {self.shard} needs {n} rows, "
                                  f"got shape {column.shape}")
            arrays[fmt.index_path(name)] = column
        blobs = {fmt.shard_key(path, self.shard): self.store.encoders[path].encode(data)
                 for path, data in arrays.items()}
        tails = {fmt.shard_key(path, self.shard): self.store.decoders[path].index_nbytes
                 for path in arrays}
        self._stats = {hook: f.result().to_dict() for hook, f in stats.items()}
        # Checked right before publishing, so a writer whose lease was broken (declared dead)
        # stops as soon as it wakes up instead of overwriting its successor's shard.
        self._check_lease()
        with disk_full(self.store.url, f"shard {self.shard}"):
            self.store.location.put_many(blobs)
        # The index's crc lets a reader that fetches only some chunks check, with the index it
        # reads anyway, that the object is the one committed (not another shard's).
        self._objects = {k: {"size": len(b), "crc32c": fmt.checksum(b),
                             "index_crc32c": fmt.index_checksum(b[-tails[k]:])}
                         for k, b in blobs.items()}

    def _encode_rows(self, hook: str, values: Any, stats: dict[str, Future[HookStats]]
                     ) -> dict[str, NDArray[Any]]:
        """One hook's stored arrays (path -> array); starts its statistics in `stats`, which
        overlap the encoding of the other arrays."""
        dtype = self.store.spec.dtype
        if isinstance(values, QuantisedRows):
            return self._quantised_rows(hook, values, stats)
        if not fmt.is_float8(dtype):
            stored = fmt.to_storage(values, dtype)
            stats[hook] = run_in_pool(HookStats.of, fmt.from_storage(stored, dtype))
            return {fmt.activation_path(hook): stored}
        exact = torch.as_tensor(values).detach()
        try:
            q = quantise(exact, dtype)
        except ValueError as e:
            raise FormatError(f"hook {hook}: shard {self.shard}: {e}") from None
        # Statistics and the noise floor come from the exact rows, not their 8-bit rounding.
        stats[hook] = run_in_pool(lambda: HookStats.of(exact.cpu()).with_quantisation_error(
            q.sq_error / max(1, exact.shape[0])))
        return {fmt.activation_path(hook): q.codes.cpu().numpy(),
                fmt.scale_path(hook): q.scales.cpu().numpy()}

    def _quantised_rows(self, hook: str, q: QuantisedRows, stats: dict[str, Future[HookStats]]
                        ) -> dict[str, NDArray[Any]]:
        """The arrays of rows quantised elsewhere, checked as far as bits can be."""
        dtype, n = self.store.spec.dtype, self.rows[1] - self.rows[0]
        checks = [(fmt.is_float8(dtype), f"a {dtype} store takes exact rows, not 8-bit codes"),
                  (q.codes.dtype == torch.uint8, f"codes must be uint8, got {q.codes.dtype}"),
                  (q.scales.shape == (n,) and q.scales.dtype == torch.float32,
                   f"scales must be ({n},) float32, got {tuple(q.scales.shape)} "
                   f"{q.scales.dtype}"),
                  (q.stats.count == n and q.stats.mean_sq_error is not None,
                   f"statistics must cover the {n} exact rows and their error")]
        for ok, why in checks:
            if not ok:
                raise FormatError(f"hook {hook}: shard {self.shard}: {why}")
        done: Future[HookStats] = Future()
        done.set_result(q.stats)
        stats[hook] = done
        return {fmt.activation_path(hook): q.codes.cpu().contiguous().numpy(),
                fmt.scale_path(hook): q.scales.cpu().contiguous().numpy()}

    def commit(self) -> None:
        """Publish the commit marker (exclusively), then drop the lease."""
        loc = self.store.location
        expected = len(self.store.encoders)  # every array has an object per shard
        if len(self._objects) != expected:
            raise FormatError(f"shard {self.shard}: commit before all arrays were written")
        self._check_lease()
        record = {"shard": self.shard, "rows": list(self.rows), "writer": self.writer_id,
                  "committed_at": time.time(), "objects": self._objects, "stats": self._stats,
                  **owner()}
        try:
            loc.put_exclusive(fmt.marker_key(fmt.COMMITS, self.shard), group_bytes(record))
        except FileExistsError:
            raise ShardCommittedError(
                f"shard {self.shard} of {self.store.url} was committed by another writer"
            ) from None
        self.release()

    def _check_lease(self) -> None:
        held = read_attrs(self.store.location, self._lease_key)
        if held is None or held.get("writer") != self.writer_id:
            self._leased = False
            raise ShardLeaseError(
                f"writer {self.writer_id!r} lost its lease on shard {self.shard} of "
                f"{self.store.url} (now held by {(held or {}).get('writer')!r})")


def write_shard(store: ActivationStore, shard: int, activations: Mapping[str, Any],
                index: RowIndex, writer_id: str) -> None:
    """Lease, write and commit one shard in one call."""
    with ShardWriter(store, shard, writer_id) as w:
        w.write(activations, index)
        w.commit()


def break_lease(store: ActivationStore, shard: int) -> dict[str, Any] | None:
    """Remove a shard's lease (its writer is known dead); returns what the lease said."""
    key = fmt.marker_key(fmt.LEASES, shard)
    held = read_attrs(store.location, key)
    store.location.delete(key)
    return held
