"""The on-disk format: array paths, codecs, dtypes, and encoding one shard into its object bytes.

Everything here is plain Zarr v3, so a store reads with `zarr` and `pyarrow` alone (see
docs/FORMAT.md). zarr 3.1 has no bfloat16 dtype, so bf16 activations are stored as their uint16
bit pattern and the array's attribute `actstore.dtype` names the logical dtype. 8-bit stores
hold float8 bit patterns (uint8) and one float32 scale per row in `scales/<hook>` (`quant/`).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import google_crc32c
import numpy as np
import torch
import zarr
from numpy.typing import NDArray
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from actstore.store import quant, shard_codec
from actstore.store.quant import kernels
from actstore.store.shard_codec import ShardDecoder, ShardEncoder
from actstore.store.spec import Codec, Layout, StorageDtype

ACTIVATIONS = "activations"
INDEX = "index"
SCALES = "scales"
CONTEXTS = "contexts"
COMMITS = "commits"
LEASES = "leases"
LOCK = "lock"
META = "zarr.json"

#: Row-index arrays: name -> numpy dtype. Aligned row for row with the activations.
INDEX_ARRAYS: dict[str, str] = {"context": "int64", "position": "int32", "token": "int32"}

_STORAGE_NUMPY: dict[str, str] = {"bfloat16": "uint16", "float16": "float16", "float32": "float32",
                                  "float8_e4m3": "uint8", "float8_e5m2": "uint8"}
_TORCH: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
    # 8-bit rows are read as float32 (codes times their row's scale)
    "float8_e4m3": torch.float32, "float8_e5m2": torch.float32,
}


def activation_path(hook: str) -> str:
    return f"{ACTIVATIONS}/{hook}"


def index_path(name: str) -> str:
    return f"{INDEX}/{name}"


def scale_path(hook: str) -> str:
    """The per-row scales of an 8-bit hook (float32, one per row)."""
    return f"{SCALES}/{hook}"


def is_float8(dtype: StorageDtype) -> bool:
    return quant.is_float8(dtype)


def shard_key(array_path: str, shard: int) -> str:
    """Object key of one shard of a 1-D or 2-D array (default v3 chunk key encoding)."""
    return f"{array_path}/c/{shard}" + ("/0" if array_path.startswith(ACTIVATIONS) else "")


def marker_key(kind: str, shard: int) -> str:
    """Key of a commit marker or lease: a zarr group whose attributes are the payload."""
    return f"{kind}/shard-{shard:06d}/{META}"


INDEX_CODEC = Codec(name="zstd", level=3, shuffle="noshuffle")
"""Row-index arrays are small integers: plain zstd suffices."""
SCALE_CODEC = Codec(name="blosc-zstd", level=3, shuffle="shuffle")
"""Scales are positive float32 of similar size: byte shuffle groups their exponents. They are
4 bytes a row against d_model for the codes, so their codec hardly matters."""


def compressors(codec: Codec, itemsize: int) -> list[BytesBytesCodec]:
    """Chunk codecs: the compressor, then a crc32c checksum so corruption is caught on read."""
    chain: list[BytesBytesCodec] = []
    if codec.name.startswith("blosc-"):
        cname = cast(Literal["zstd", "lz4", "lz4hc"], codec.name.removeprefix("blosc-"))
        chain.append(BloscCodec(cname=cname, clevel=codec.level,
                                shuffle=codec.shuffle, typesize=itemsize))
    elif codec.name == "zstd":
        chain.append(ZstdCodec(level=codec.level))
    elif codec.name != "none":  # `Codec` refuses other names; a new one must be added here
        raise ValueError(f"no zarr codec for {codec.name!r}")
    chain.append(Crc32cCodec())
    return chain


def storage_numpy_dtype(dtype: StorageDtype) -> np.dtype[Any]:
    return np.dtype(_STORAGE_NUMPY[dtype])


def torch_dtype(dtype: StorageDtype) -> torch.dtype:
    """The dtype rows of a store are read in (float32 for 8-bit stores)."""
    return _TORCH[dtype]


def to_storage(values: torch.Tensor | NDArray[Any], dtype: StorageDtype) -> NDArray[Any]:
    """Cast activations (any float tensor or array) to the numpy array that is stored
    (lossless dtypes only: 8-bit rows need their scales, `quant.quantise`)."""
    if is_float8(dtype):
        raise ValueError(f"{dtype} rows are quantised with a scale per row: use quant.quantise")
    t = torch.as_tensor(values).detach().to("cpu", _TORCH[dtype]).contiguous()
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_storage(raw: NDArray[Any], dtype: StorageDtype,
                 scales: NDArray[Any] | None = None) -> torch.Tensor:
    """The stored numpy array as a torch tensor of the logical dtype (zero-copy view; 8-bit
    codes with their row scales: float32 values)."""
    t = torch.from_numpy(np.ascontiguousarray(raw))
    if is_float8(dtype):
        return quant.dequantise(t, torch.from_numpy(_need_scales(scales, dtype)), dtype)
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def to_float32(raw: NDArray[Any], dtype: StorageDtype, scales: NDArray[Any] | None = None,
               mean: NDArray[np.float32] | None = None, scale: float = 1.0
               ) -> NDArray[np.float32]:
    """Exact float32 values of stored activations (bf16 is the top half of a float32; 8-bit
    codes are float8 values times their row's scale); then, if given, (x − mean) × scale in
    float32. `raw` is never written (a float32 store's own rows come back as they are)."""
    if is_float8(dtype):
        return quant.dequantise_numpy(raw, _need_scales(scales, dtype), dtype, mean, scale)
    if dtype == "bfloat16":
        return kernels.bf16_rows(raw, mean=mean, scale=scale)
    return kernels.normalise_numpy(raw.astype(np.float32, copy=False), mean, scale)


def _need_scales(scales: NDArray[Any] | None, dtype: StorageDtype) -> NDArray[Any]:
    if scales is None:
        raise ValueError(f"{dtype} rows need their scales to be read as values")
    return scales


def array_definitions(layout: Layout, dtype: StorageDtype) -> dict[str, dict[str, Any]]:
    """Path -> arguments of `zarr.create_array` for every array of a store."""
    defs: dict[str, dict[str, Any]] = {}
    np_dtype = storage_numpy_dtype(dtype)
    for hook, d in layout.d_model.items():
        defs[activation_path(hook)] = {
            "shape": (layout.num_rows, d), "dtype": np_dtype,
            "shards": (layout.shard_rows, d), "chunks": (layout.chunk_rows, d),
            "compressors": compressors(layout.codec, np_dtype.itemsize),
            "fill_value": 0, "attributes": {"actstore.dtype": dtype, "actstore.hook": hook,
                                            **({"actstore.scales": scale_path(hook)}
                                               if is_float8(dtype) else {})},
        }
        if is_float8(dtype):
            defs[scale_path(hook)] = {
                "shape": (layout.num_rows,), "dtype": np.dtype("float32"),
                "shards": (layout.shard_rows,), "chunks": (layout.chunk_rows,),
                "compressors": compressors(SCALE_CODEC, 4), "fill_value": 0.0,
                "attributes": {"actstore.scales_of": activation_path(hook)},
            }
    for name, idx_dtype in INDEX_ARRAYS.items():
        defs[index_path(name)] = {
            "shape": (layout.num_rows,), "dtype": np.dtype(idx_dtype),
            "shards": (layout.shard_rows,), "chunks": (layout.chunk_rows,),
            "compressors": compressors(INDEX_CODEC, np.dtype(idx_dtype).itemsize),
            "fill_value": -1,
            "attributes": {"actstore.index": name},
        }
    return defs


def shard_encoders(layout: Layout, dtype: StorageDtype) -> dict[str, ShardEncoder]:
    """Path -> fast encoder producing exactly the shard objects zarr would for that array."""
    encoders = {}
    for path, definition in array_definitions(layout, dtype).items():
        codec = codec_of(path, layout)
        encoders[path] = ShardEncoder(
            shard_rows=layout.shard_rows, chunk_rows=layout.chunk_rows,
            compressor=shard_codec.compressor(codec, definition["dtype"].itemsize),
            fill_value=definition["fill_value"])
    return encoders


def codec_of(path: str, layout: Layout) -> Codec:
    if path.startswith(ACTIVATIONS):
        return layout.codec
    return SCALE_CODEC if path.startswith(SCALES) else INDEX_CODEC


def shard_decoders(layout: Layout, dtype: StorageDtype) -> dict[str, ShardDecoder]:
    """Path -> decoder of that array's shard objects."""
    decoders = {}
    encoders = shard_encoders(layout, dtype)
    for path, definition in array_definitions(layout, dtype).items():
        encoder = encoders[path]
        decoders[path] = ShardDecoder(
            shard_rows=layout.shard_rows, chunk_rows=layout.chunk_rows,
            row_shape=tuple(definition["shape"][1:]), dtype=definition["dtype"],
            compressor=encoder.compressor, fill_value=definition["fill_value"])
    return decoders


def encode_shard_reference(meta: bytes, array_path: str, shard: int, rows: tuple[int, int],
                           data: NDArray[Any]) -> bytes:
    """Reference encoder: zarr itself writes the shard into a twin array held in memory.

    Slow (several copies through zarr's async path) but authoritative: tests require
    `ShardEncoder` to produce the same bytes.
    """
    mem = MemoryStore()
    buf = default_buffer_prototype().buffer.from_bytes(meta)
    zarr.core.sync.sync(mem.set(f"{array_path}/{META}", buf))
    # write_empty_chunks: an all-fill shard still gets an object, so "committed" always means
    # "its objects exist" and verify needs no special case. (open_array ignores `config=` in
    # r+ mode in zarr 3.1; the array captures the global setting when opened.)
    with zarr.config.set({"array.write_empty_chunks": True}):
        twin = zarr.open_array(store=mem, path=array_path, mode="r+")
    twin[rows[0]:rows[1]] = data
    out = zarr.core.sync.sync(mem.get(shard_key(array_path, shard), default_buffer_prototype()))
    if out is None:
        raise RuntimeError(f"zarr wrote no object for {array_path} shard {shard}")
    return bytes(out.to_bytes())


def checksum(data: bytes) -> int:
    """crc32c of a whole object, recorded in commit markers."""
    return int(google_crc32c.value(data))


def index_checksum(tail: bytes) -> int:
    """crc32c of a shard index, recorded in commit markers. The index ends with its own crc32c,
    so the crc of the whole tail would be the same constant for every index: leave that out."""
    return int(google_crc32c.value(tail[:-4]))
