"""The on-disk format (actstore.store.format): plain zarr and pyarrow read a store."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch
import zarr

from tests.helpers import HOOKS, fill_store, new_store


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
