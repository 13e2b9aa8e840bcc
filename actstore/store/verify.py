"""`actstore verify`: read every object whole (checksums against the commit markers) and every
chunk by the ranged reads the loader makes, and prove every row of every committed shard is
present exactly once. Problems are collected (not raised) so one run names all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore, RowIndex
from actstore.store.errors import StoreError

T = TypeVar("T")


@dataclass
class VerifyReport:
    """What verify found."""

    shards_checked: int = 0
    """Committed shards whose data was read."""
    rows_checked: int = 0
    """Rows of those shards."""
    problems: list[str] = field(default_factory=list)
    """One line per problem; empty means the store is sound."""

    @property
    def ok(self) -> bool:
        return not self.problems


class _Coverage:
    """Expected (context, position) slots from the contexts table, and how often each was seen."""

    def __init__(self, contexts: pa.Table) -> None:
        ids = contexts.column("context_id").to_numpy()
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        tokens = contexts.column("tokens").take(pa.array(order))
        self.lengths = np.asarray(tokens.combine_chunks().value_lengths(), dtype=np.int64)
        self.flat = np.asarray(tokens.combine_chunks().flatten(), dtype=np.int32)
        self.starts = contexts.column("start").to_numpy()[order].astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.seen = np.zeros(int(self.offsets[-1]), dtype=bool)
        self.duplicate_ids = len(np.unique(self.ids)) != len(self.ids)

    def add(self, shard: int, idx: RowIndex) -> list[str]:
        if len(self.ids) == 0:
            return [f"shard {shard}: rows name contexts but the contexts table is empty"]
        where = np.minimum(np.searchsorted(self.ids, idx.context), len(self.ids) - 1)
        known = self.ids[where] == idx.context
        if not known.all():
            bad = idx.context[~known][:5].tolist()
            return [f"shard {shard}: {int((~known).sum())} rows name unknown contexts {bad}"]
        pos = idx.position.astype(np.int64)
        ok = (pos >= self.starts[where]) & (pos < self.lengths[where])
        if not ok.all():
            return [f"shard {shard}: {int((~ok).sum())} rows have positions outside their "
                    "context's stored range"]
        slots = self.offsets[where] + pos
        problems = []
        wrong = int((self.flat[slots] != idx.token).sum())
        if wrong:
            problems.append(f"shard {shard}: {wrong} rows have a token id that differs from "
                            "the contexts table")
        again = len(slots) - len(np.unique(slots)) + int(self.seen[slots].sum())
        if again:
            problems.append(f"shard {shard}: {again} rows repeat a (context, position) pair "
                            "stored before")
        self.seen[slots] = True
        return problems

    def expected_mask(self) -> NDArray[np.bool_]:
        """Slots that must be stored: positions at or after each context's `start`."""
        pos = np.arange(len(self.seen)) - np.repeat(self.offsets[:-1], self.lengths)
        mask: NDArray[np.bool_] = pos >= np.repeat(self.starts, self.lengths)
        return mask

    def final(self, complete: bool) -> list[str]:
        problems = []
        if self.duplicate_ids:
            problems.append("contexts table has duplicate context_id values")
        missing = int((self.expected_mask() & ~self.seen).sum())
        if complete and missing:
            problems.append(f"{missing} (context, position) pairs of the contexts table are "
                            "missing from the complete store")
        return problems


def verify(store: ActivationStore, partial: bool = False) -> VerifyReport:
    """Check every committed shard; unless `partial`, an incomplete store is a problem too."""
    report = VerifyReport()
    done = store.shards_done()
    missing = store.shards_missing()
    if missing and not partial:
        report.problems.append(f"{len(missing)} of {store.num_shards} shards not committed: "
                               f"{_ranges(missing)}")
    try:
        contexts = store.read_contexts(["context_id", "start", "tokens"])
    except (OSError, ValueError) as e:  # an unreadable Parquet part
        report.problems.append(f"contexts table cannot be read: {type(e).__name__}: {e}")
        contexts = pa.table({"context_id": pa.array([], pa.int64()),
                             "start": pa.array([], pa.int32()),
                             "tokens": pa.array([], pa.list_(pa.int32()))})
    if contexts.num_rows == 0:
        report.problems.append("contexts table is empty or missing (contexts/*.parquet)")
    coverage = _Coverage(contexts)
    for shard in done:
        try:
            report.problems += _verify_shard(store, shard,
                                             coverage if contexts.num_rows else None)
        except (StoreError, OSError, ValueError, KeyError) as e:  # an unreadable marker, ...
            report.problems.append(f"shard {shard}: cannot be checked: {type(e).__name__}: {e}")
        report.shards_checked += 1
        a, b = store.layout.shard_rows_range(shard)
        report.rows_checked += b - a
    if contexts.num_rows:
        report.problems += coverage.final(complete=not missing)
    return report


def _verify_shard(store: ActivationStore, shard: int, coverage: _Coverage | None) -> list[str]:
    record = store.commit_record(shard)
    a, b = store.layout.shard_rows_range(shard)
    problems = []
    if record.get("rows") != [a, b]:
        problems.append(f"shard {shard}: marker says rows {record.get('rows')}, layout [{a}, {b})")
    for key, want in record.get("objects", {}).items():  # whole reads
        try:
            blob = store.location.get(key)
        except FileNotFoundError:
            problems.append(f"shard {shard}: object {key} is missing")
            continue
        if len(blob) != want["size"] or fmt.checksum(blob) != want["crc32c"]:
            problems.append(f"shard {shard}: object {key} differs from what was committed "
                            f"(size {len(blob)} vs {want['size']}, crc32c mismatch)")
    # Then the ranged reads the loader makes (a store whose whole objects are sound but whose
    # ranges read wrong would pass the above and fail in training), by a reader with nothing
    # cached, as a training rank starts; decoding checks every chunk's own crc32c.
    reader = ActivationStore(store.location, store.spec, store.layout)
    for hook in store.hooks:
        try:
            # read_float32 reads the codes and, in 8-bit stores, the scales too
            _in_ranges(store, shard, partial(reader.read_float32, hook))
        except StoreError as e:  # a missing or corrupt object: say so, check the rest
            problems.append(f"shard {shard}: {e}")
    try:
        parts = _in_ranges(store, shard, reader.read_index)
    except StoreError as e:
        return [*problems, f"shard {shard}: {e}"]
    if coverage is not None:
        idx = RowIndex(*(np.concatenate(column) for column in zip(*parts, strict=True)))
        problems += coverage.add(shard, idx)
    return problems


RANGED_READ_CHUNKS = 8
"""Chunks per ranged read of verify (at most; at least two reads per shard of two chunks or
more, so a range that starts inside the object is always read): the loader reads runs of
chunks, and shards of hundreds of chunks then cost tens of requests, not hundreds."""


def _in_ranges(store: ActivationStore, shard: int, read: Callable[[int, int], T]) -> list[T]:
    """`read(r0, r1)` over a shard's rows in runs of whole chunks, never the whole shard
    when it has two chunks or more."""
    a, b = store.layout.shard_rows_range(shard)
    per = store.layout.chunk_rows
    chunks = -(-(b - a) // per)
    step = per * max(1, min(RANGED_READ_CHUNKS, chunks // 2))
    return [read(r0, min(r0 + step, b)) for r0 in range(a, b, step)]


def _ranges(values: list[int]) -> str:
    """[0,1,2,5] -> '0-2, 5' so a long list of shards stays readable."""
    out: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if v is not None:
            start = prev = v
    return ", ".join(out)
