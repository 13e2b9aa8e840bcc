"""The fast shard encoder writes exactly the bytes zarr writes (zarr is the reference)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from zarr.storage import MemoryStore

from actstore import Codec, Layout
from actstore.store import format as fmt

CODECS = [Codec("blosc-zstd", 3, "bitshuffle"), Codec("blosc-zstd", 1, "shuffle"),
          Codec("blosc-lz4", 5, "bitshuffle"), Codec("blosc-lz4hc", 2, "bitshuffle"),
          Codec("zstd", 3, "noshuffle"),
          Codec("none", 0, "noshuffle")]


def zarr_metadata(layout: Layout, dtype: fmt.StorageDtype) -> dict[str, bytes]:
    """Each array's zarr.json bytes, as zarr writes them for the store's definitions."""
    mem = MemoryStore()
    for path, definition in fmt.array_definitions(layout, dtype).items():
        zarr.create_array(store=mem, name=path, zarr_format=3, **definition)
    return {path: bytes(mem._store_dict[f"{path}/zarr.json"].to_bytes())
            for path in fmt.array_definitions(layout, dtype)}


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: f"{c.name}-{c.shuffle}")
@pytest.mark.parametrize(("num_rows", "dtype"), [
    (96, "bfloat16"),    # whole shards
    (83, "float16"),     # last shard short, last chunk partial
    (70, "float32"),     # last shard holds whole chunks only, some chunks absent
])
def test_fast_encoder_matches_zarr(codec: Codec, num_rows: int,
                                   dtype: fmt.StorageDtype) -> None:
    layout = Layout(num_rows=num_rows, d_model={"h": 7}, shard_rows=30, chunk_rows=10,
                    codec=codec)
    gen = np.random.default_rng(num_rows)
    values = gen.normal(size=(num_rows, 7)).astype(np.float32)
    values[:12] = 0.0  # a chunk equal to the fill value is still stored
    columns = {
        fmt.activation_path("h"): fmt.to_storage(values, dtype),
        fmt.index_path("context"): gen.integers(0, 50, num_rows).astype(np.int64),
        fmt.index_path("position"): gen.integers(0, 9, num_rows).astype(np.int32),
        fmt.index_path("token"): np.full(num_rows, -1, np.int32),  # all fill value
    }
    meta = zarr_metadata(layout, dtype)
    encoders = fmt.shard_encoders(layout, dtype)
    for path, data in columns.items():
        assert json.loads(meta[path])["shape"][0] == num_rows
        for shard in range(layout.num_shards):
            a, b = layout.shard_rows_range(shard)
            want = fmt.encode_shard_reference(meta[path], path, shard, (a, b), data[a:b])
            assert encoders[path].encode(data[a:b]) == want, (path, shard)


def test_encoder_refuses_oversized_shards() -> None:
    layout = Layout(num_rows=100, d_model={"h": 3}, shard_rows=20, chunk_rows=10)
    enc = fmt.shard_encoders(layout, "float32")[fmt.activation_path("h")]
    with pytest.raises(ValueError, match=r"holds 1\.\.20 rows"):
        enc.encode(np.zeros((21, 3), np.float32))


@pytest.mark.parametrize(("name", "shuffle"), [("lz4hc", "bitshuffle"), ("blosc-foo", "shuffle"),
                                               ("zstd", "weird")])
def test_an_unknown_codec_is_refused_not_stored_raw(name: str, shuffle: str) -> None:
    with pytest.raises(ValueError, match=r"^codec (name|shuffle) must be one of"):
        Codec(name, 3, shuffle)  # type: ignore[arg-type]
