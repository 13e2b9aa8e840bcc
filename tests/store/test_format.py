"""The on-disk format (actstore.store.format): plain zarr and pyarrow read a store."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from actstore import Layout
from actstore.store.spec import DTYPE_ITEMSIZE, default_codec
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


@pytest.mark.parametrize(("num_rows", "width", "shard_bytes", "chunk_bytes"), [
    (32768, 384, 8192 * 768, 2 << 20),   # a small job: shards of 8,192 bf16 rows planned
    (10**8, 384, 256 << 20, 2 << 20),    # the defaults, MiniLM-wide
    (10**7, 4096, 256 << 20, 2 << 20),   # a wide model
    (100, 384, 256 << 20, 2 << 20),      # fewer rows than one shard holds
    (1000, 7, 64, 16),                   # chunks of two rows
])
def test_layout_for_sizes_gives_every_dtype_its_planned_shard(
        num_rows: int, width: int, shard_bytes: int, chunk_bytes: int) -> None:
    # The shard size asked for, in rows, is the bf16 one: each dtype gets it in bytes.
    want = min(num_rows, shard_bytes // (width * 2))
    for dtype, itemsize in DTYPE_ITEMSIZE.items():
        layout = Layout.for_sizes(num_rows, {"h": width}, dtype,
                                  shard_bytes=want * width * itemsize, chunk_bytes=chunk_bytes)
        assert layout.shard_rows % layout.chunk_rows == 0
        assert layout.chunk_rows * width * itemsize <= max(chunk_bytes, width * itemsize)
        # whole chunks reaching the size asked for, less than one chunk beyond it
        assert want <= layout.shard_rows < want + layout.chunk_rows, dtype
        assert layout.codec == default_codec(dtype)
