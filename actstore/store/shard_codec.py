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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import google_crc32c
import numcodecs
import numpy as np
from numpy.typing import NDArray

from actstore.store.spec import Codec

ABSENT = np.uint64(2**64 - 1)
T = TypeVar("T")


@cache
def _pool() -> ThreadPoolExecutor:
    # Created on first use, never at import: importing actstore starts no threads.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="actstore-enc")


def run_in_pool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Run CPU work that releases the GIL (numpy, codecs) beside the caller's."""
    return _pool().submit(fn, *args, **kwargs)


def crc32c_bytes(data: bytes | memoryview) -> bytes:
    """crc32c as zarr's codec appends it: 4 bytes, little-endian."""
    # google_crc32c's C extension refuses memoryviews but takes a zero-copy numpy view.
    view = np.frombuffer(data, dtype=np.uint8) if isinstance(data, memoryview) else data
    return np.uint32(google_crc32c.value(view)).tobytes()


def compressor(codec: Codec, itemsize: int) -> numcodecs.abc.Codec | None:
    """The numcodecs codec zarr builds for the same configuration."""
    if codec.name.startswith("blosc-"):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle]
        return numcodecs.Blosc(cname=codec.name.removeprefix("blosc-"), clevel=codec.level,
                               shuffle=shuffle, blocksize=0, typesize=itemsize)
    if codec.name == "zstd":
        return numcodecs.Zstd(level=codec.level, checksum=False)
    if codec.name != "none":  # `Codec` refuses other names; a new one must be added here
        raise ValueError(f"no numcodecs codec for {codec.name!r}")
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
        raw = memoryview(block.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        out = self.compressor.encode(raw) if self.compressor is not None else raw
        out_bytes = bytes(out) if not isinstance(out, bytes) else out
        return out_bytes + crc32c_bytes(out_bytes)


class ChunkError(ValueError):
    """An inner chunk or a shard index failed its checksum or could not be decoded."""

    def __init__(self, chunk: int | None, reason: str) -> None:
        self.chunk = chunk
        super().__init__(reason)


class ReadLengthError(ChunkError):
    """A read of a shard object came back with more or fewer bytes than asked for: a
    truncated object, or a server that ignored the range request. Said as such, since the
    checksum the wrong bytes then fail names the wrong cause."""

    def __init__(self, what: str, received: int, expected: int,
                 why: str = "a truncated object, or a server that ignored the range request"
                 ) -> None:
        self.received, self.expected = received, expected
        super().__init__(None, f"{what} {received} bytes, expected {expected} ({why})")


@dataclass(frozen=True)
class ShardDecoder:
    """Reads rows out of shard objects written by `ShardEncoder` (or by zarr itself)."""

    shard_rows: int
    """Rows per shard."""
    chunk_rows: int
    """Rows per inner chunk."""
    row_shape: tuple[int, ...]
    """Shape of one row: (d_model,) for activations, () for the row index."""
    dtype: np.dtype[Any]
    """Stored numpy dtype."""
    compressor: numcodecs.abc.Codec | None
    """Compressor of each inner chunk."""
    fill_value: int | float
    """Value of absent chunks."""

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_rows // self.chunk_rows

    @property
    def index_nbytes(self) -> int:
        return 16 * self.chunks_per_shard + 4

    def parse_index(self, tail: bytes) -> NDArray[np.uint64]:
        """(chunks_per_shard, 2) offsets and sizes from the object's last `index_nbytes`."""
        if len(tail) != self.index_nbytes:
            raise ReadLengthError("shard index read returned", len(tail), self.index_nbytes)
        body, crc = tail[:-4], tail[-4:]
        if crc32c_bytes(body) != crc:
            raise ChunkError(None, "shard index failed its crc32c check")
        return np.frombuffer(body, dtype="<u8").reshape(self.chunks_per_shard, 2)

    def chunk_span(self, index: NDArray[np.uint64], c0: int, c1: int) -> tuple[int, int]:
        """Byte range [start, end) covering the present chunks among c0..c1-1."""
        if c1 - c0 == 1:  # most reads: plain ints (numpy calls on tiny slices cost tens of µs)
            off, size = (int(v) for v in index[c0])
            return (0, 0) if off == int(ABSENT) else (off, off + size)
        present = index[c0:c1][index[c0:c1, 0] != ABSENT]
        if len(present) == 0:
            return 0, 0
        return int(present[:, 0].min()), int((present[:, 0] + present[:, 1]).max())

    def decode_into(self, out: NDArray[Any], index: NDArray[np.uint64], data: bytes, *,
                    base: int, c0: int, first_row: int) -> None:
        """Decode chunks c0.. (their bytes in `data`, which starts at object offset `base`)
        into `out`, whose row 0 is shard row `first_row`."""
        rows = out.shape[0]
        c1 = -(-(first_row + rows) // self.chunk_rows)

        def one(c: int) -> None:
            lo, hi = max(c * self.chunk_rows, first_row), min((c + 1) * self.chunk_rows,
                                                              first_row + rows)
            dest = out[lo - first_row:hi - first_row]
            off, size = index[c]
            if off == ABSENT:
                dest[...] = self.fill_value
                return
            blob = memoryview(data)[int(off) - base:int(off) - base + int(size)]
            if hi - lo == self.chunk_rows and self._direct and dest.flags.c_contiguous:
                self._decode_chunk(c, blob, dest)  # no intermediate buffer, no copy
                return
            dest[...] = self._decode_chunk(c, blob)[lo - c * self.chunk_rows:
                                                    hi - c * self.chunk_rows]

        if c1 - c0 == 1:  # one chunk: decode here rather than hand it to another thread
            one(c0)
        else:
            list(_pool().map(one, range(c0, c1)))

    @property
    def _direct(self) -> bool:
        """Whole chunks can be decompressed straight into the caller's array."""
        return self.compressor is not None and self.dtype == self.dtype.newbyteorder("<")

    def _decode_chunk(self, c: int, blob: memoryview,
                      out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Check and decode one chunk; with `out` (a whole chunk, `_direct` codecs only) the
        codec decompresses straight into it."""
        if len(blob) < 4 or crc32c_bytes(blob[:-4]) != bytes(blob[-4:]):
            raise ChunkError(c, "failed its crc32c check")
        try:
            if out is not None and self.compressor is not None:
                self.compressor.decode(blob[:-4], out=out)
                return out
            raw = self.compressor.decode(blob[:-4]) if self.compressor else blob[:-4]
            arr = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"))
            return arr.reshape(self.chunk_rows, *self.row_shape)
        except (RuntimeError, ValueError) as e:
            raise ChunkError(c, f"could not be decoded: {e}") from e
