"""verify (actstore.store.verify): corrupt chunks, duplicate and missing rows named."""

from __future__ import annotations

import pytest

from actstore import (
    ActivationStore,
    CorruptChunkError,
    RowIndex,
    verify,
    write_shard,
)
from actstore.loader.loader import Loader, LoaderConfig
from actstore.store import format as fmt
from tests.faults import ignoring_ranges
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


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
@pytest.mark.parametrize("which", ["suffix", "other"])
def test_verify_makes_the_loaders_ranged_reads(store_url: str, which: str) -> None:
    """Through a server that ignores range requests (whole objects read fine), verify fails
    as the loader would, naming the cause; a store that verifies, trains."""
    store = new_store(store_url)
    fill_store(store)
    assert verify(store).ok
    broken = ignoring_ranges(store, which)  # type: ignore[arg-type]
    report = verify(broken)
    # The last shard is one chunk (8 rows), read whole by the loader too: only 0-2 fail,
    # each in both hooks and the row index (whose 96 rows are then not seen).
    shards = [p for p in report.problems if p.startswith("shard ")]
    assert sorted(p.split(":")[0] for p in shards) == [
        f"shard {s}" for s in (0, 1, 2) for _ in range(3)], report.problems
    for p in shards:
        assert p.endswith("(a truncated object, or a server that ignored the range request)")
    assert set(report.problems) - set(shards) == {
        "96 (context, position) pairs of the contexts table are missing from the complete store"}
    loader = Loader(LoaderConfig(hooks=(HOOKS[0],), batch_size=8), store=broken, rank=0,
                    world_size=1)
    with pytest.raises(CorruptChunkError, match=r"a server that ignored the range request"):
        list(loader)
