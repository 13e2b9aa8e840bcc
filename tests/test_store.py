"""The shared store suite: every test runs on memory://, a local folder and S3 (moto server)."""

from __future__ import annotations

import threading
import typing

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from actstore import (
    ActivationStore,
    CorruptChunkError,
    FormatError,
    HookStats,
    RowIndex,
    ShardCommittedError,
    ShardLeaseError,
    ShardWriter,
    SpecMismatchError,
    StoreNotFoundError,
    break_lease,
    verify,
    write_shard,
)
from actstore.store import format as fmt
from actstore.store.spec import StorageDtype
from tests.helpers import HOOKS, fill_store, make_layout, make_spec, new_store

DTYPES: tuple[StorageDtype, ...] = typing.get_args(StorageDtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_exact(store_url: str, dtype: StorageDtype) -> None:
    store = new_store(store_url, dtype)
    want = fill_store(store)
    again = ActivationStore.open(store_url, make_spec(dtype))
    assert again.complete
    for hook in HOOKS:
        got = again.read_torch(hook, 0, again.num_rows)
        assert got.dtype == fmt.torch_dtype(dtype)
        assert torch.equal(got, want.activations[hook].to(fmt.torch_dtype(dtype)))
        as_f32 = again.read_float32(hook, 5, 50)
        assert np.array_equal(as_f32, got[5:50].float().numpy())
    idx = again.read_index(0, again.num_rows)
    for got_col, want_col in zip(idx, want.index, strict=True):
        assert np.array_equal(got_col, want_col)
    assert again.read_contexts().equals(want.contexts)


def test_same_spec_reuses_and_different_spec_names_fields(store_url: str) -> None:
    store = new_store(store_url)
    want = fill_store(store, shards=[0])
    reopened = ActivationStore.create(store_url, make_spec(), make_layout(num_contexts=50))
    assert reopened.key == store.key
    assert reopened.layout == store.layout  # the existing store wins; nothing is rewritten
    assert reopened.shards_done() == [0]
    assert torch.equal(reopened.read_torch(HOOKS[0], 0, 32),
                       want.activations[HOOKS[0]][:32].bfloat16())
    with pytest.raises(SpecMismatchError) as err:
        ActivationStore.create(store_url, make_spec(context_length=16, dtype="float16"),
                               make_layout())
    assert set(err.value.differences) == {"context_length", "dtype"}
    assert "context_length: store has 8, asked for 16" in str(err.value)


def test_missing_store_is_a_clear_error(store_url: str) -> None:
    with pytest.raises(StoreNotFoundError, match="no actstore store at"):
        ActivationStore.open(store_url)


def test_unknown_hook_names_the_hooks(store_url: str) -> None:
    store = new_store(store_url)
    with pytest.raises(KeyError, match=r"encoder\.layer\.1"):
        store.read("encoder.layer.9", 0, 1)


def test_interrupted_shard_is_not_done_and_is_retried(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[0, 2])
    # A writer that dies after writing its data but before the commit marker.
    dead = ShardWriter(store, 1, writer_id="dead")
    dead.acquire()
    dead.write({h: torch.ones(32, d) for h, d in store.layout.d_model.items()},
               RowIndex(*(np.zeros(32),) * 3))
    assert store.shards_done() == [0, 2]
    assert not store.complete
    assert not verify(store).ok
    with pytest.raises(ShardLeaseError, match="'dead'"):
        ShardWriter(store, 1, writer_id="retry").acquire()
    assert break_lease(store, 1)["writer"] == "dead"  # the job knows the writer died
    want = fill_store(store, shards=[1, 3])
    assert store.complete
    assert torch.equal(store.read_torch(HOOKS[1], 32, 64),
                       want.activations[HOOKS[1]][32:64].bfloat16())
    report = verify(store)
    assert report.ok, report.problems


def test_committed_shard_is_never_rewritten(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    with pytest.raises(ShardCommittedError):
        ShardWriter(store, 0, writer_id="again").acquire()


def test_writer_whose_lease_was_broken_cannot_commit(store_url: str) -> None:
    store = new_store(store_url)
    want = fill_store(store, shards=[])
    slow = ShardWriter(store, 0, writer_id="slow")
    slow.acquire()
    break_lease(store, 0)  # the job declared `slow` dead and retried the shard
    fill_store(store, shards=[0])
    acts = {h: torch.zeros(32, d) for h, d in store.layout.d_model.items()}
    with pytest.raises(ShardLeaseError, match="lost its lease"):
        slow.write(acts, RowIndex(*(np.zeros(32),) * 3))
    assert torch.equal(store.read_torch(HOOKS[0], 0, 32),
                       want.activations[HOOKS[0]][:32].bfloat16())


def test_concurrent_writers_of_one_shard(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[])
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def attempt() -> None:
        barrier.wait()
        try:
            fill_store(ActivationStore.open(store_url), seed=0, shards=[0])
            outcomes.append("won")
        except (ShardLeaseError, ShardCommittedError):
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1, outcomes
    assert store.shards_done() == [0]
    assert verify(store, partial=True).ok


def test_stats_merge_to_the_whole_store(store_url: str) -> None:
    store = new_store(store_url, "float32")
    want = fill_store(store)
    for hook in HOOKS:
        x = want.activations[hook].double().numpy()
        stats = store.stats(hook)
        assert stats.count == store.num_rows
        np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12, atol=1e-12)
        assert stats.mean_sq_norm == pytest.approx((x**2).sum(1).mean(), rel=1e-12)


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


def test_format_reads_with_plain_zarr_and_pyarrow(store_url: str) -> None:
    store = new_store(store_url)
    want = fill_store(store)
    group = zarr.open_group(store=store.location.zarr_store(read_only=True), mode="r")
    assert group.attrs["actstore"]["key"] == store.key
    bits = group[f"activations/{HOOKS[0]}"][:]
    assert bits.dtype == np.uint16
    assert group[f"activations/{HOOKS[0]}"].attrs["actstore.dtype"] == "bfloat16"
    assert torch.equal(torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16),
                       want.activations[HOOKS[0]].bfloat16())
    assert np.array_equal(group["index/token"][:], want.index.token)
    assert group["commits/shard-000002"].attrs["rows"] == [64, 96]
    table = pq.read_table(store.location.path("contexts"), filesystem=store.location.fs)
    assert table.equals(want.contexts)


def test_hook_stats_merge_is_order_free() -> None:
    gen = np.random.default_rng(1)
    x = gen.normal(size=(100, 7))
    parts = [HookStats.of(x[:13]), HookStats.of(x[13:60]), HookStats.of(x[60:])]
    merged = HookStats.merge_all(reversed(parts), 7)
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    assert merged.mean_sq_norm == pytest.approx((x**2).sum(1).mean(), rel=1e-12)


def test_fast_reads_equal_zarr_reads_on_any_range(store_url: str) -> None:
    store = new_store(store_url, "float16")
    fill_store(store)
    group = zarr.open_group(store=store.location.zarr_store(read_only=True), mode="r")
    gen = np.random.default_rng(7)
    for _ in range(25):
        a = int(gen.integers(0, store.num_rows))
        b = int(gen.integers(a, store.num_rows + 1))
        for hook in HOOKS:
            assert np.array_equal(store.read(hook, a, b), group[f"activations/{hook}"][a:b])
        assert np.array_equal(store.read_index(a, b).context, group["index/context"][a:b])


def test_reading_an_unwritten_shard_is_an_error_not_zeros(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[0])
    with pytest.raises(FormatError, match=r"shard 1 not written yet"):
        store.read(HOOKS[0], 30, 40)


def test_corrupt_shard_index_is_named(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    key = fmt.shard_key(fmt.activation_path(HOOKS[1]), 0)
    blob = bytearray(store.location.get(key))
    blob[-10] ^= 0x01  # inside the index at the end of the object
    store.location.put(key, bytes(blob))
    with pytest.raises(CorruptChunkError, match=rf"{key}.*index failed its crc32c"):
        store.read(HOOKS[1], 3, 5)
