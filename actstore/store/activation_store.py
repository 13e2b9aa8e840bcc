"""ActivationStore: open or create a store by URL, and read everything downstream needs.

Writing goes through `writer.ShardWriter` (one whole shard at a time, committed with a marker)
and `lock.JobLock` (one generation job per store). See docs/FORMAT.md for the layout.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import zarr
from numpy.typing import NDArray

from actstore.store import format as fmt
from actstore.store.errors import (
    CorruptChunkError,
    FormatError,
    SpecMismatchError,
    StoreNotFoundError,
    full_disk,
)
from actstore.store.location import Location, access_errors
from actstore.store.shard_codec import ChunkError, ReadLengthError
from actstore.store.spec import Layout, StoreSpec
from actstore.store.stats import HookStats

CONTEXT_SCHEMA = pa.schema([
    pa.field("context_id", pa.int64(), nullable=False),
    pa.field("doc_id", pa.int64(), nullable=False),
    pa.field("start", pa.int32(), nullable=False),
    pa.field("tokens", pa.list_(pa.int32()), nullable=False),
])
"""Contexts table: `tokens` is the exact model input; rows are stored for positions
[start, len(tokens)) (start is 1 when the BOS row is dropped); doc_id is the source document."""


def stored_row_counts(contexts: pa.Table) -> NDArray[np.int64]:
    """Rows each context contributes to the store: positions start .. len(tokens) - 1."""
    lengths = contexts.column("tokens").combine_chunks().value_lengths().to_numpy()
    counts: NDArray[np.int64] = lengths.astype(np.int64) - contexts.column("start").to_numpy()
    return counts


class RowIndex(NamedTuple):
    """Where each stored row came from, aligned with the activation rows."""

    context: NDArray[np.int64]
    """context_id of the row (a row of the contexts table)."""
    position: NDArray[np.int32]
    """Token position inside that context."""
    token: NDArray[np.int32]
    """Token id at that position."""


class ActivationStore:
    """A store opened at a URL. Cheap to create; safe to pickle to Ray workers by URL."""

    def __init__(self, location: Location, spec: StoreSpec, layout: Layout) -> None:
        self.location = location
        self.spec = spec
        self.layout = layout
        self.encoders = fmt.shard_encoders(layout, spec.dtype)
        """Array path -> encoder of its shard objects (used by writers)."""
        self.decoders = fmt.shard_decoders(layout, spec.dtype)
        """Array path -> decoder of its shard objects."""
        self.context_parts: tuple[str, ...] | None = ()
        """Parquet parts of the contexts table written at creation, which must exist (checked
        by `problem`); () when it was created without one (a store written through the API
        may have none); None for a store older than this record (then some part must exist,
        as generation always wrote one)."""
        self._indices: dict[tuple[str, int], NDArray[np.uint64]] = {}
        """Parsed shard indices, so chunk-sized reads cost one request, not two. Only shards
        being read are cached; committed shards never change."""
        self._records: dict[int, dict[str, Any]] = {}
        """Commit markers of shards being read (a committed shard never changes)."""

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, spec: StoreSpec | None = None,
             storage_options: dict[str, Any] | None = None) -> ActivationStore:
        """Open an existing store; with `spec`, fail with the differing fields if it differs."""
        loc = Location.from_url(url, storage_options)
        attrs = read_root_attrs(loc)
        if attrs is None:
            raise StoreNotFoundError(f"no actstore store at {url} (no {fmt.META} with "
                                     "actstore attributes; run `actstore ls` on its parent)")
        found = StoreSpec.from_dict(attrs["spec"])
        if spec is not None and spec != found:
            raise SpecMismatchError(url, found.diff(spec))
        store = cls(loc, found, Layout.from_dict(attrs["layout"]))
        parts = attrs.get("context_parts")
        store.context_parts = None if parts is None else tuple(parts)
        return store

    @classmethod
    def create(cls, url: str, spec: StoreSpec, layout: Layout,
               storage_options: dict[str, Any] | None = None,
               contexts: pa.Table | None = None) -> ActivationStore:
        """Create the store, or open it if one with the same spec exists (never overwrites one).

        `contexts` (the contexts table) is written before the root attributes, so a store that
        exists always has it: a write that fails half-way (a full disk) leaves no store, and
        the rerun starts clean. Callers that may race another job hold `JobLock` first:
        creation itself is not atomic.
        """
        loc = Location.from_url(url, storage_options)
        if read_root_attrs(loc) is not None:
            return cls.open(url, spec, storage_options)
        if set(layout.d_model) != set(spec.hooks):
            raise FormatError(f"layout d_model names hooks {sorted(layout.d_model)}, "
                              f"spec names {sorted(spec.hooks)}")
        zstore = loc.zarr_store()
        for path, definition in fmt.array_definitions(layout, spec.dtype).items():
            # overwrite: without root attributes no shard was ever committed here.
            zarr.create_array(store=zstore, name=path, zarr_format=3, overwrite=True, **definition)
        # contexts/ holds only Parquet (no zarr.json) so pyarrow reads the folder as a dataset.
        for name in (fmt.COMMITS, fmt.LEASES):
            zarr.open_group(store=zstore, path=name, mode="a", zarr_format=3)
        store = cls(loc, spec, layout)
        parts = [store.write_contexts(contexts).rsplit("/", 1)[-1]] if contexts is not None else []
        attrs = {"actstore": {"format_version": spec.format_version, "key": spec.key,
                              "spec": spec.to_dict(), "layout": layout.to_dict(),
                              "created_at": time.time(), "context_parts": parts}}
        # The root's attributes are written last: their presence means "created".
        root_meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        with disk_full(url, "the store's root metadata"):
            loc.put(fmt.META, json.dumps(root_meta, indent=2).encode())
        store.context_parts = tuple(parts)
        return store

    # --- identity and progress ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.spec.hooks

    @property
    def num_rows(self) -> int:
        return self.layout.num_rows

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def shards_done(self) -> list[int]:
        """Committed shards, ascending (listing the commit markers)."""
        self.location.invalidate()
        names = self.location.list(fmt.COMMITS)
        return sorted(int(n.removeprefix("shard-")) for n in names if n.startswith("shard-"))

    def shards_missing(self) -> list[int]:
        done = set(self.shards_done())
        return [s for s in range(self.num_shards) if s not in done]

    @property
    def complete(self) -> bool:
        """Every shard committed and the contexts table present."""
        return self.problem() is None

    def contexts_missing(self) -> list[str]:
        """Parts of the contexts table that should exist and do not (all of it, when the store
        predates the record of its parts and has none)."""
        if self.context_parts == ():
            return []
        present = {n for n in self.location.list(fmt.CONTEXTS) if n.endswith(".parquet")}
        if self.context_parts is None:
            return [] if present else ["*.parquet"]
        return [p for p in self.context_parts if p not in present]

    def problem(self) -> str | None:
        """Why the store is not complete, in one line, or None when it is."""
        missing = self.shards_missing()
        if missing:
            return f"{len(missing)} of {self.num_shards} shards not committed"
        lost = self.contexts_missing()
        if lost:
            parts = ", ".join(f"{fmt.CONTEXTS}/{p}" for p in lost)
            return (f"its contexts table is missing ({parts}); rerun `actstore generate` with "
                    "the same flags to rebuild it")
        return None

    def require_complete(self) -> None:
        """Refuse to read a store that is not complete (what training and loading need)."""
        problem = self.problem()
        if problem is not None:
            raise ValueError(f"store {self.url} is incomplete ({problem}): finish generating "
                             "it first")

    def commit_record(self, shard: int) -> dict[str, Any]:
        """The payload of a shard's commit marker (rows, objects with checksums, stats)."""
        meta = self.location.get_json(fmt.marker_key(fmt.COMMITS, shard))
        record: dict[str, Any] = meta["attributes"]
        return record

    # --- reading -----------------------------------------------------------------------------

    def read(self, hook: str, start: int, stop: int) -> NDArray[Any]:
        """Rows [start, stop) of a hook as stored (bf16 as uint16 bits; see `read_torch`)."""
        return self._read(self._hook_path(hook), start, stop)

    def read_into(self, hook: str, start: int, stop: int, out: NDArray[Any]) -> None:
        """Decode rows [start, stop) straight into `out` (storage dtype, stop - start rows)."""
        self._read(self._hook_path(hook), start, stop, out)

    def read_torch(self, hook: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) as a tensor of the storage dtype (8-bit stores: float32 values)."""
        return fmt.from_storage(self.read(hook, start, stop), self.spec.dtype,
                                self._scales(hook, start, stop))

    def read_float32(self, hook: str, start: int, stop: int) -> NDArray[np.float32]:
        return fmt.to_float32(self.read(hook, start, stop), self.spec.dtype,
                              self._scales(hook, start, stop))

    def read_scales_into(self, hook: str, start: int, stop: int, out: NDArray[Any]) -> None:
        """Decode the row scales of an 8-bit hook, rows [start, stop), into `out` (float32)."""
        self._hook_path(hook)
        self._read(fmt.scale_path(hook), start, stop, out)

    def _scales(self, hook: str, start: int, stop: int) -> NDArray[np.float32] | None:
        """The row scales of an 8-bit hook; None for lossless dtypes, which have none."""
        if not fmt.is_float8(self.spec.dtype):
            return None
        self._hook_path(hook)
        return self._read(fmt.scale_path(hook), start, stop)

    def read_shard(self, hook: str, shard: int) -> NDArray[Any]:
        return self.read(hook, *self.layout.shard_rows_range(shard))

    def read_index(self, start: int, stop: int) -> RowIndex:
        return RowIndex(*(self._read(fmt.index_path(n), start, stop) for n in fmt.INDEX_ARRAYS))

    def read_contexts(self, columns: list[str] | None = None) -> pa.Table:
        """The contexts table (all parts, concatenated in part order)."""
        parts = [n for n in self.location.list(fmt.CONTEXTS) if n.endswith(".parquet")]
        tables = [pq.read_table(io.BytesIO(self.location.get(f"{fmt.CONTEXTS}/{n}")),
                                columns=columns) for n in parts]
        if not tables:
            schema = CONTEXT_SCHEMA if columns is None else pa.schema(
                [CONTEXT_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    def write_contexts(self, table: pa.Table, part: int = 0) -> str:
        """Write one part of the contexts table (atomically); returns its path in the store."""
        try:
            table = table.select(CONTEXT_SCHEMA.names).cast(CONTEXT_SCHEMA)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise FormatError(f"contexts table must have columns {CONTEXT_SCHEMA}: {e}") from e
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        path = f"{fmt.CONTEXTS}/part-{part:05d}.parquet"
        with disk_full(self.url, f"contexts part {part}"):
            self.location.put(path, sink.getvalue())
        return path

    def stats(self, hook: str, shards: Sequence[int] | None = None) -> HookStats:
        """Statistics of a hook over the committed shards (merged from their markers), or
        over the given ones only (a training slice)."""
        self._hook_path(hook)
        chosen = self.shards_done() if shards is None else sorted(set(shards))
        parts = (HookStats.from_dict(self.commit_record(s)["stats"][hook]) for s in chosen)
        return HookStats.merge_all(parts, self.layout.d_model[hook])

    # --- internals ---------------------------------------------------------------------------

    def _hook_path(self, hook: str) -> str:
        if hook not in self.layout.d_model:
            raise KeyError(f"hook {hook!r} is not in store {self.url}; it has {list(self.hooks)}")
        return fmt.activation_path(hook)

    def _read(self, path: str, start: int, stop: int,
              out: NDArray[Any] | None = None) -> NDArray[Any]:
        if not 0 <= start <= stop <= self.num_rows:
            raise IndexError(f"rows [{start}, {stop}) outside [0, {self.num_rows})")
        dec = self.decoders[path]
        if out is None:
            out = np.empty((stop - start, *dec.row_shape), dtype=dec.dtype)
        elif out.shape != (stop - start, *dec.row_shape) or out.dtype != dec.dtype:
            raise ValueError(f"out has shape {out.shape} {out.dtype}, rows need "
                             f"{(stop - start, *dec.row_shape)} {dec.dtype}")
        rows_per = self.layout.shard_rows
        for shard in range(start // rows_per, -(-stop // rows_per)):
            s0 = shard * rows_per
            a, b = max(start, s0), min(stop, s0 + rows_per)
            self._read_shard_rows(path, shard, a - s0, out[a - start:b - start])
        return out

    def _read_shard_rows(self, path: str, shard: int, first: int, out: NDArray[Any]) -> None:
        """Fill `out` with rows first.. of one shard: the index, then one range of chunks."""
        dec, key = self.decoders[path], fmt.shard_key(path, shard)
        whole = first == 0 and len(out) == min(self.layout.shard_rows,
                                               self.num_rows - shard * self.layout.shard_rows)
        try:
            blob = self.location.get(key) if whole else None  # one request for a whole shard
            index = self._indices.get((path, shard))
            if index is None:
                index = self._indices[path, shard] = self._read_index(path, shard, key, blob)
            c0 = first // dec.chunk_rows
            c1 = -(-(first + len(out)) // dec.chunk_rows)
            lo, hi = (0, len(blob)) if blob is not None else dec.chunk_span(index, c0, c1)
            data = blob if blob is not None else (
                self.location.get_range(key, lo, hi) if hi > lo else b"")
            if len(data) != hi - lo:  # its chunks' crc32c would fail and name the wrong cause
                chunks = f"chunk {c0}" if c1 - c0 == 1 else f"chunks {c0}-{c1 - 1}"
                raise ReadLengthError(f"{chunks} read (bytes {lo}-{hi}) returned", len(data),
                                      hi - lo)
            dec.decode_into(out, index, data, base=lo, c0=c0, first_row=first)
        except FileNotFoundError:
            raise FormatError(f"{self.url}: shard object {key} does not exist (shard {shard} "
                              "not written yet?)") from None
        except ChunkError as e:
            raise self._corrupt(path, shard, key, e) from e

    def _read_index(self, path: str, shard: int, key: str,
                    blob: bytes | None) -> NDArray[np.uint64]:
        """A shard object's index, from the end of `blob` (the whole object) or by a suffix
        range read (what a reader of some chunks does), checked against its own crc32c, then
        against the commit marker's record."""
        dec = self.decoders[path]
        tail = (blob[-dec.index_nbytes:] if blob is not None else
                self.location.get_range(key, -dec.index_nbytes))
        try:
            index = dec.parse_index(tail)  # its own crc first: a torn index says so
        except ReadLengthError:
            raise
        except ChunkError:
            # The end of a truncated object is not its index: say it is truncated.
            want = self._record(shard).get("objects", {}).get(key, {}).get("size")
            size = len(blob) if blob is not None else self.location.size(key)
            if want is not None and size != want:
                raise ReadLengthError("the object is", size, want, "its size when committed: "
                                      "truncated or overwritten since") from None
            raise
        self._check_committed(key, shard, tail)
        return index

    def _record(self, shard: int) -> dict[str, Any]:
        """A committed shard's marker, read once (a committed shard never changes)."""
        record = self._records.get(shard)
        if record is None:
            try:
                record = self._records[shard] = self.commit_record(shard)
            except FileNotFoundError:
                raise FormatError(f"{self.url}: shard {shard} is not committed") from None
        return record

    def _check_committed(self, key: str, shard: int, tail: bytes) -> None:
        """The object's index is the one its shard's commit marker recorded: an object
        swapped with another shard's, or replaced after the commit, is refused (its chunks
        alone would pass their own checksums). Markers older than this record are trusted."""
        want = self._record(shard).get("objects", {}).get(key, {}).get("index_crc32c")
        if want is not None and fmt.index_checksum(tail) != want:
            raise CorruptChunkError(f"{self.url}: shard object {key} is not the one shard "
                                    f"{shard} committed (its index differs from the commit "
                                    "marker's record: swapped or overwritten)")

    def _corrupt(self, path: str, shard: int, key: str, e: ChunkError) -> CorruptChunkError:
        if e.chunk is None:
            return CorruptChunkError(f"{self.url}: shard object {key} of {path}: {e}")
        rows = self.layout.chunk_rows
        r0 = shard * self.layout.shard_rows + e.chunk * rows
        r1 = min(r0 + rows, self.num_rows) - 1
        return CorruptChunkError(f"{self.url}: chunk {r0 // rows} (rows {r0}-{r1}) of {path} "
                                 f"in shard object {key} {e}")


def disk_full(url: str, what: str) -> contextlib.AbstractContextManager[None]:
    """A full disk while writing `what` of the store at `url`: one StoreFullError that says
    nothing committed was lost."""
    return full_disk(lambda _: f"{url}: no space left writing {what}; committed shards are "
                     "intact and a rerun resumes once space is freed")


def read_root_attrs(loc: Location) -> dict[str, Any] | None:
    """The `actstore` attributes of the root group, or None if there is no store there."""
    try:
        with access_errors(loc.url):
            meta = loc.get_json(fmt.META)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    attrs = meta.get("attributes", {}).get("actstore")
    return attrs if isinstance(attrs, dict) else None
