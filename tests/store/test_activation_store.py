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
from actstore.store.quant.float8 import dequantise, is_float8, quantise
from actstore.store.spec import StorageDtype
from tests.faults import ignoring_ranges
from tests.helpers import HOOKS, fill_store, make_layout, make_spec, new_store

DTYPES: tuple[StorageDtype, ...] = typing.get_args(StorageDtype)


def stored(x: torch.Tensor, dtype: StorageDtype) -> torch.Tensor:
    """What a store of `dtype` holds for rows `x`: a cast, or (8-bit) each row's rounding at
    its own scale, as the quantiser defines it (its own tests check it bit by bit)."""
    if is_float8(dtype):
        q = quantise(x, dtype)
        return dequantise(q.codes, q.scales, dtype)
    return x.to(fmt.torch_dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_exact(store_url: str, dtype: StorageDtype) -> None:
    store = new_store(store_url, dtype)
    want = fill_store(store)
    again = ActivationStore.open(store_url, make_spec(dtype))
    assert again.complete
    for hook in HOOKS:
        got = again.read_torch(hook, 0, again.num_rows)
        assert got.dtype == fmt.torch_dtype(dtype)
        assert torch.equal(got, stored(want.activations[hook], dtype))
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


#: A shard index of the helpers' layout: (offset, size) as two uint64 per chunk of the shard
#: (32 rows / 8 per chunk), then its crc32c (the zarr v3 sharding spec).
INDEX_NBYTES = 16 * (32 // 8) + 4


@pytest.mark.parametrize("store_url", ["memory", "local"], indirect=True)
def test_a_truncated_object_is_named_truncated_not_corrupt(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    key = fmt.shard_key(fmt.activation_path(HOOKS[0]), 1)
    blob = store.location.get(key)
    store.location.put(key, blob[:10])  # shorter than its index
    for rows in ((33, 35), (32, 64)):  # a few chunks (ranged reads), the whole shard
        with pytest.raises(CorruptChunkError) as err:
            ActivationStore.open(store_url).read(HOOKS[0], *rows)
        assert str(err.value).endswith(
            f"shard object {key} of {fmt.activation_path(HOOKS[0])}: shard index read returned "
            f"10 bytes, expected {INDEX_NBYTES} (a truncated object, or a server that ignored "
            "the range request)")
    half = len(blob) // 2  # longer than the index, but its end is no index
    store.location.put(key, blob[:half])
    for rows in ((33, 35), (32, 64)):
        with pytest.raises(CorruptChunkError) as err:
            ActivationStore.open(store_url).read(HOOKS[0], *rows)
        assert str(err.value).endswith(f"the object is {half} bytes, expected {len(blob)} (its "
                                       "size when committed: truncated or overwritten since)")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
@pytest.mark.parametrize("which", ["suffix", "other"])
def test_a_server_that_ignores_range_requests_is_named(store_url: str, which: str) -> None:
    """A server that answers a range request with the whole object: the read says it got the
    wrong number of bytes, not that a checksum failed."""
    store = new_store(store_url)
    fill_store(store)
    key = fmt.shard_key(fmt.activation_path(HOOKS[0]), 0)
    blob = store.location.get(key)
    size = len(blob)
    offset, first_chunk = np.frombuffer(blob[-INDEX_NBYTES:-4], "<u8")[:2]  # chunk 0's
    assert offset == 0
    broken = ignoring_ranges(store, which)  # type: ignore[arg-type]
    with pytest.raises(CorruptChunkError) as err:
        broken.read(HOOKS[0], 3, 5)
    what = (f"shard index read returned {size} bytes, expected {INDEX_NBYTES}"
            if which == "suffix" else
            f"chunk 0 read (bytes 0-{first_chunk}) returned {size} bytes, expected {first_chunk}")
    assert str(err.value) == (f"{store_url}: shard object {key} of "
                              f"{fmt.activation_path(HOOKS[0])}: {what} (a truncated object, "
                              "or a server that ignored the range request)")
    # whole reads are sound on that server
    assert np.array_equal(broken.read(HOOKS[0], 0, 32), store.read(HOOKS[0], 0, 32))


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
