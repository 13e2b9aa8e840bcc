"""Encode one whole shard straight into the bytes of a Zarr v3 `sharding_indexed` object.

Why not let zarr write it: zarr's write path copies the shard several times through its async
machinery and ran at a fraction of the codec's speed (profiled in benchmarks/store_codecs.py).
This encoder compresses the inner chunks in parallel threads (numcodecs releases the GIL) and
joins them once. Its output is byte-for-byte what zarr writes for the same array: the tests
check it against `format.encode_shard_reference`, which makes zarr do the encoding.

Layout of a shard (zarr v3 sharding spec, index at the end): the encoded inner chunks, then an
index of (offset, nbytes) uint64 pairs in C order of the chunk grid (2**64-1 for an absent
chunk), little-endian, followed by the index's crc32c. Each inner chunk is: the chunk's bytes
(C order, little-endian, padded to the full chunk shape with the fill value), compressed, then
its crc32c.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
from numpy.typing import NDArray

from actstore.spec import Codec

ABSENT = np.uint64(2**64 - 1)


@cache
def _pool() -> ThreadPoolExecutor:
    # Created on first use, never at import: importing actstore starts no threads.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="actstore-enc")


def crc32c_bytes(data: bytes | memoryview) -> bytes:
    return np.uint32(google_crc32c.value(data)).tobytes()


def compressor(codec: Codec, itemsize: int) -> numcodecs.abc.Codec | None:
    """The numcodecs codec zarr builds for the same configuration."""
    if codec.name.startswith("blosc-"):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle]
        return numcodecs.Blosc(cname=codec.name.removeprefix("blosc-"), clevel=codec.level,
                               shuffle=shuffle, blocksize=0, typesize=itemsize)
    if codec.name == "zstd":
        return numcodecs.Zstd(level=codec.level, checksum=False)
    return None


@dataclass(frozen=True)
class ShardEncoder:
    """Encodes shards of one array (all shards share chunking, codec and fill value)."""

    shard_rows: int
    """Rows per shard (the shard shape along axis 0; other axes are whole)."""
    chunk_rows: int
    """Rows per inner chunk."""
    compressor: numcodecs.abc.Codec | None
    """Compressor of each inner chunk (None: stored raw)."""
    fill_value: int | float
    """Value that pads the last inner chunk of a short (final) shard."""

    def encode(self, data: NDArray[Any]) -> bytes:
        """Bytes of the shard object holding `data` (at most shard_rows rows)."""
        n = data.shape[0]
        if not 0 < n <= self.shard_rows:
            raise ValueError(f"a shard holds 1..{self.shard_rows} rows, got {n}")
        data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
        starts = range(0, n, self.chunk_rows)
        pieces = list(_pool().map(lambda s: self._encode_chunk(data[s:s + self.chunk_rows]),
                                  starts))
        grid = (self.shard_rows // self.chunk_rows, *([1] * (data.ndim - 1)))
        index = np.full((*grid, 2), ABSENT, dtype="<u8")
        flat = index.reshape(-1, 2)
        sizes = np.array([len(p) for p in pieces], dtype=np.uint64)
        flat[: len(pieces), 0] = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
        flat[: len(pieces), 1] = sizes
        index_bytes = index.tobytes()
        return b"".join([*pieces, index_bytes, crc32c_bytes(index_bytes)])

    def _encode_chunk(self, block: NDArray[Any]) -> bytes:
        if block.shape[0] < self.chunk_rows:  # edge chunk: zarr pads to the full chunk shape
            padded = np.full((self.chunk_rows, *block.shape[1:]), self.fill_value, block.dtype)
            padded[: block.shape[0]] = block
            block = padded
        raw = memoryview(block).cast("B")
        out = self.compressor.encode(raw) if self.compressor is not None else raw
        out_bytes = bytes(out) if not isinstance(out, bytes) else out
        return out_bytes + crc32c_bytes(out_bytes)
