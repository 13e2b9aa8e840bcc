"""ActivationStore (actstore.store.activation_store): create, reopen, read back exactly,
and refuse what is missing or not what was committed. Every test taking `store_url`
runs on memory://, a local folder and S3 (moto server)."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import zarr

from actstore import (
    ActivationStore,
    CorruptChunkError,
    FormatError,
    SpecMismatchError,
    StoreNotFoundError,
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


def test_swapped_shard_objects_are_refused_on_read(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    a, b = (fmt.shard_key(f"activations/{HOOKS[0]}", s) for s in (0, 1))
    blob_a, blob_b = store.location.get(a), store.location.get(b)
    store.location.put(a, blob_b)
    store.location.put(b, blob_a)
    fresh = ActivationStore.open(store_url)
    with pytest.raises(CorruptChunkError, match=r"is not the one shard 0 committed"):
        fresh.read(HOOKS[0], 3, 9)  # a few chunks: only the index is checked
    with pytest.raises(CorruptChunkError, match=r"is not the one shard 1 committed"):
        fresh.read(HOOKS[0], 32, 64)  # a whole shard
    fresh.read(HOOKS[1], 0, 104)  # the other hook is intact
