"""verify (actstore.store.verify): corrupt chunks, duplicate and missing rows named."""

from __future__ import annotations

import pytest

from actstore import (
    ActivationStore,
    RowIndex,
    verify,
    write_shard,
)
from actstore.store import format as fmt
from tests.helpers import HOOKS, fill_store, new_store


def test_corrupt_chunk_is_named_by_read_and_verify(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    key = fmt.shard_key(fmt.activation_path(HOOKS[0]), 1)
    blob = bytearray(store.location.get(key))
    blob[40] ^= 0xFF  # inside the first chunk's compressed bytes
    store.location.put(key, bytes(blob))
    fresh = ActivationStore.open(store_url)
    with pytest.raises(Exception, match=rf"chunk 4 \(rows 32-39\).*{key}"):
        fresh.read(HOOKS[0], 30, 40)
    report = verify(fresh)
    assert not report.ok
    assert any(key in p and "shard 1" in p for p in report.problems), report.problems
    assert fresh.read(HOOKS[0], 0, 32).shape == (32, 12)  # other shards still read


def test_verify_finds_duplicate_and_missing_rows(store_url: str) -> None:
    store = new_store(store_url)
    want = fill_store(store, shards=[0, 1, 2])
    assert verify(store, partial=True).ok
    assert verify(store).problems == ["1 of 4 shards not committed: 3"]
    # Rewrite shard 3 with one row duplicated from shard 0 (as a buggy writer would).
    idx = [c.copy() for c in want.index]
    for c in idx:
        c[96] = c[0]
    a, b = store.layout.shard_rows_range(3)
    write_shard(store, 3, {h: v[a:b] for h, v in want.activations.items()},
                RowIndex(*(c[a:b] for c in idx)), writer_id="buggy")
    problems = verify(store).problems
    assert any("repeat a (context, position)" in p for p in problems), problems
    assert any("1 (context, position) pairs of the contexts table are missing" in p
               for p in problems), problems
