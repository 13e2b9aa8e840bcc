"""Two stores read as one, row by row: model diffing's input (the same tokens through two
models, e.g. a base model and its fine-tune).

    store A ─┐  same contexts (ids, tokens), same layout: shard s holds the same contexts
    store B ─┘  in both, each shuffled in its own order (the write-time shuffle is seeded by
                the store's key, so by its model)
      ──▶ PairedStore: store A with B's hooks beside its own, named HOOK@B; row r of HOOK@B is
          B's row holding A's row r's (context, position), so every reader of a store (the
          Loader: one permutation for both, resumable as for one store; held-out slices;
          statistics) reads the two as one aligned stream

Pairing is refused, naming the first difference, when the contexts tables differ (a context
only one has, or another token at some position), when the layouts differ (rows, shard or
chunk size), or when the storage dtypes differ. A run of A's rows maps to B's rows of the same
shard, read as the span covering them: up to a shard per run (the cost of B's own order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actstore.store.activation_store import ActivationStore
from actstore.store.stats import HookStats

__all__ = ["SECOND", "PairedStore", "first_difference", "open_stores", "pair"]

#: Appended to store B's hook names in the pair (a module path never holds it).
SECOND = "@B"


def first_difference(a: pa.Table, b: pa.Table) -> str | None:
    """Where two contexts tables first differ (by context id, then position), or None."""
    def rows(t: pa.Table) -> dict[int, tuple[int, list[int]]]:
        d = t.select(["context_id", "start", "tokens"]).to_pydict()
        return {c: (s, tok) for c, s, tok in zip(d["context_id"], d["start"], d["tokens"],
                                                 strict=True)}
    ra, rb = rows(a), rows(b)
    for cid in sorted(set(ra) | set(rb)):
        if cid not in rb or cid not in ra:
            return f"context {cid} is only in store {'A' if cid in ra else 'B'}"
        (sa, ta), (sb, tb) = ra[cid], rb[cid]
        pos = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y),
                   None if len(ta) == len(tb) else min(len(ta), len(tb)))
        if pos is not None:
            got = (ta[pos] if pos < len(ta) else "the end", tb[pos] if pos < len(tb) else "the end")
            return f"context {cid}, position {pos}: token {got[0]} in A, {got[1]} in B"
        if sa != sb:
            return f"context {cid}: stored from position {sa} in A, {sb} in B"
    return None


def _row_map(a: ActivationStore, b: ActivationStore) -> NDArray[np.int64]:
    """For each row of A, the row of B holding the same (context, position)."""
    ia, ib = a.read_index(0, a.num_rows), b.read_index(0, b.num_rows)
    width = int(max(ia.position.max(), ib.position.max())) + 1
    ka = ia.context.astype(np.int64) * width + ia.position
    kb = ib.context.astype(np.int64) * width + ib.position
    out = np.empty(a.num_rows, dtype=np.int64)
    for s in range(a.num_shards):  # same contexts per shard: B's order within it
        lo, hi = a.layout.shard_rows_range(s)
        oa, ob = np.argsort(ka[lo:hi], kind="stable"), np.argsort(kb[lo:hi], kind="stable")
        if not np.array_equal(ka[lo:hi][oa], kb[lo:hi][ob]):
            raise ValueError(f"stores {a.url} and {b.url} hold other rows in shard {s}: they "
                             "cannot be read row by row")
        out[lo + oa] = lo + ob
    return out


class PairedStore(ActivationStore):
    """Store A, with store B's hooks as HOOK@B, B's rows in A's order."""

    def __init__(self, a: ActivationStore, b: ActivationStore) -> None:
        d_model = {**a.layout.d_model,
                   **{h + SECOND: d for h, d in b.layout.d_model.items()}}
        super().__init__(a.location, a.spec, dataclasses.replace(a.layout, d_model=d_model))
        self.context_parts = a.context_parts
        self.first, self.second = a, b
        self.b_rows = _row_map(a, b)

    @property
    def key(self) -> str:
        return f"{self.first.key}+{self.second.key}"

    @property
    def urls(self) -> tuple[str, str]:
        return self.first.url, self.second.url

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(self.layout.d_model)

    def require_complete(self) -> None:
        self.first.require_complete()
        self.second.require_complete()

    def read(self, hook: str, start: int, stop: int) -> NDArray[Any]:
        if not hook.endswith(SECOND):
            return super().read(hook, start, stop)
        rows = self.b_rows[start:stop]
        if not len(rows):
            return self.second.read(hook.removesuffix(SECOND), 0, 0)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.second.read(hook.removesuffix(SECOND), lo, hi)[rows - lo]

    def read_into(self, hook: str, start: int, stop: int, out: NDArray[Any]) -> None:
        if not hook.endswith(SECOND):
            super().read_into(hook, start, stop, out)
        else:
            out[...] = self.read(hook, start, stop)

    def stats(self, hook: str, shards: Sequence[int] | None = None) -> HookStats:
        """A shard holds the same rows in both, so B's statistics over the same shards."""
        if hook.endswith(SECOND):
            return self.second.stats(hook.removesuffix(SECOND), shards)
        return super().stats(hook, shards)


def pair(url_a: str, url_b: str) -> PairedStore:
    """Open two stores as one, or refuse (one line naming the first difference)."""
    a, b = ActivationStore.open(url_a), ActivationStore.open(url_b)
    if (a.num_rows, a.layout.shard_rows, a.layout.chunk_rows) != (
            b.num_rows, b.layout.shard_rows, b.layout.chunk_rows):
        raise ValueError(f"stores {a.url} and {b.url} are cut differently (rows, shard rows, "
                         f"chunk rows: {a.num_rows, a.layout.shard_rows, a.layout.chunk_rows} "
                         f"and {b.num_rows, b.layout.shard_rows, b.layout.chunk_rows}); "
                         "generate both over one corpus with the same flags")
    if a.spec.dtype != b.spec.dtype:
        raise ValueError(f"stores {a.url} and {b.url} store {a.spec.dtype} and "
                         f"{b.spec.dtype}: generate both with one --dtype")
    diff = first_difference(a.read_contexts(), b.read_contexts())
    if diff is not None:
        raise ValueError(f"stores {a.url} and {b.url} do not hold the same tokens: {diff}")
    return PairedStore(a, b)


def open_stores(urls: tuple[str, ...]) -> ActivationStore:
    """One store, or two read row by row as one (model diffing)."""
    return pair(*urls) if len(urls) == 2 else ActivationStore.open(urls[0])
