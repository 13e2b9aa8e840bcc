"""What produced a store (its spec, hashed into the store's key) and how it is laid out.

The spec is identity: two requests with equal specs must get the same store, so every field that
changes the stored numbers belongs here. The layout (shard and chunk sizes, codec) changes only how
the numbers are stored, so it is kept apart and is not part of the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

FORMAT_VERSION = 1

StorageDtype = Literal["bfloat16", "float16", "float32", "float8_e4m3", "float8_e5m2"]
BosPolicy = Literal["keep", "drop", "none"]
ContextPolicy = Literal["pack", "truncate"]

DTYPE_ITEMSIZE: dict[str, int] = {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3": 1,
                                  "float8_e5m2": 1}
"""Bytes per stored value (8-bit stores add a float32 scale per row: see `format.py`)."""
ADDED_FIELDS = ("model_weights",)
"""Spec fields added after format 1 was first written: omitted from the key while None."""


@dataclass(frozen=True)
class StoreSpec:
    """Everything that determines the numbers in a store. Hashed into the store's key."""

    model: str
    """Hugging Face model name or local path."""
    hooks: tuple[str, ...]
    """Module paths as in `model.named_modules()`, e.g. `encoder.layer.3`."""
    dataset: str
    """Dataset name, file, glob or fsspec URL, or `builtin:pydoc` for the embedded corpus."""
    context_length: int
    """Tokens per context (including any BOS token)."""
    tokenizer: str
    """Tokenizer name or path."""
    tokenizer_hash: str
    """Hash of the tokenizer's vocabulary and settings, so a changed tokenizer is noticed."""
    model_revision: str | None = None
    """Model revision (commit, tag or branch); None for local paths."""
    model_weights: str | None = None
    """What the weights are: a digest of a local folder's weight and config files
    (`sha256:…`) or the hub commit they came from (`commit:…`), so that retrained or updated
    weights under the same name get a new store. Left out of the key when None (stores made
    before it existed keep theirs)."""
    dataset_revision: str | None = None
    """Dataset revision (hub datasets), or the digest of the content (`sha256:…`) of local or
    remote files, a local dataset folder and the embedded corpus, so an edited corpus gets a new
    store instead of reusing a stale one."""
    split: str | None = None
    """Dataset split, e.g. `train`."""
    text_column: str | None = None
    """Column holding the text."""
    bos_policy: BosPolicy = "keep"
    """keep: BOS stored as a row; drop: BOS fed to the model but not stored; none: no BOS."""
    context_policy: ContextPolicy = "pack"
    """pack: documents concatenated and cut into full contexts; truncate: one context per
    document, cut at context_length (shorter ones are not padded in the store)."""
    max_tokens: int | None = None
    """Upper bound on tokens fed to the model; None means the whole dataset."""
    dtype: StorageDtype = "bfloat16"
    """Storage dtype of the activations (float8_*: 8-bit floats with a scale per row)."""
    model_dtype: str = "float32"
    """Dtype the model ran in (bf16 on GPU changes the numbers, so it is part of the identity)."""
    format_version: int = FORMAT_VERSION
    """Version of the on-disk format."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("spec needs at least one hook")
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError(f"hooks must be distinct, got {list(self.hooks)}")
        for hook in self.hooks:
            if not hook or "/" in hook or hook.startswith("."):
                raise ValueError(f"hook {hook!r} is not a module path like 'encoder.layer.3'")
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        _check_choice("dtype", self.dtype, StorageDtype)
        _check_choice("bos_policy", self.bos_policy, BosPolicy)
        _check_choice("context_policy", self.context_policy, ContextPolicy)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hooks"] = list(self.hooks)
        for name in ADDED_FIELDS:
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StoreSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown spec fields {sorted(unknown)} (newer actstore format?)")
        return cls(**{**d, "hooks": tuple(d["hooks"])})

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the spec: the store's identity."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def diff(self, other: StoreSpec) -> dict[str, tuple[object, object]]:
        """Fields whose values differ, as name -> (self's value, other's value)."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


def derived_seed(*parts: object) -> int:
    """A 64-bit seed from named parts ("key/shard", "seed/epoch/rank/window"): stable across
    processes and machines, unlike Python's hash()."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _check_choice(name: str, value: object, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


CodecName = Literal["blosc-zstd", "blosc-lz4", "blosc-lz4hc", "zstd", "none"]
Shuffle = Literal["shuffle", "bitshuffle", "noshuffle"]


@dataclass(frozen=True)
class Codec:
    """Lossless compressor applied to each chunk inside a shard (chosen by
    benchmarks/store_codecs.py: benchmarks/README.md, section `store_codecs.py`)."""

    name: CodecName = "blosc-zstd"
    """Compressor family."""
    level: int = 3
    """Compression level."""
    shuffle: Shuffle = "bitshuffle"
    """Byte/bit shuffle filter (blosc only): groups the exponent bytes, which compress well."""

    def __post_init__(self) -> None:
        # an unknown name would otherwise store chunks uncompressed without a word
        _check_choice("codec name", self.name, CodecName)
        _check_choice("codec shuffle", self.shuffle, Shuffle)


@dataclass(frozen=True)
class Layout:
    """How rows are cut into shards (one object each) and chunks (one read each)."""

    num_rows: int
    """Total rows (token positions) the finished store holds."""
    d_model: Mapping[str, int]
    """Width of each hook's activations."""
    shard_rows: int
    """Rows per shard: the unit of work, commit and upload."""
    chunk_rows: int
    """Rows per chunk inside a shard: the unit of compression and of random reads."""
    codec: Codec = field(default_factory=Codec)
    """Compressor of every activation chunk."""

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ValueError(f"num_rows must be >= 1, got {self.num_rows}")
        if self.chunk_rows < 1 or self.shard_rows < 1 or self.shard_rows % self.chunk_rows:
            raise ValueError(
                f"shard_rows ({self.shard_rows}) must be a positive multiple of "
                f"chunk_rows ({self.chunk_rows})"
            )
        if any(d < 1 for d in self.d_model.values()):
            raise ValueError(f"d_model must be positive, got {dict(self.d_model)}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_rows // self.shard_rows)

    def shard_rows_range(self, shard: int) -> tuple[int, int]:
        """Half-open row range [start, stop) of a shard; the last shard may be short."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_rows)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "d_model": dict(self.d_model)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Layout:
        return cls(**{**d, "codec": Codec(**d["codec"])})

    @classmethod
    def for_sizes(cls, num_rows: int, d_model: Mapping[str, int], dtype: StorageDtype, *,
                  shard_bytes: int = 256 << 20, chunk_bytes: int = 2 << 20,
                  codec: Codec | None = None) -> Layout:
        """Layout with shards of about `shard_bytes` raw (for the widest hook), cut into
        equal chunks of at most `chunk_bytes`.

        Defaults come from benchmarks/store_codecs.py: ~2 MiB chunks keep random reads cheap
        while compressing as well as larger ones; ~256 MiB shards are large objects for S3.
        A shard is the fewest whole chunks that reach its size, the chunks shrunk to fit, so
        that it holds the rows planned whatever the row width. (Rounded down to whole 2 MiB
        chunks, a small job's shards could hold as few as half the rows planned, and an
        8-bit store, with twice the rows per chunk, got more shards than a bf16 one.)
        The codec comes from `default_codec`.
        """
        row_bytes = max(d_model.values()) * DTYPE_ITEMSIZE[dtype]
        shard_rows = max(1, min(num_rows, shard_bytes // row_bytes))
        per_shard = -(-shard_rows // max(1, chunk_bytes // row_bytes))
        chunk_rows = -(-shard_rows // per_shard)
        return cls(num_rows=num_rows, d_model=dict(d_model), shard_rows=chunk_rows * per_shard,
                   chunk_rows=chunk_rows, codec=codec or default_codec(dtype))


def default_codec(dtype: StorageDtype) -> Codec:
    """The activations' compressor when none is asked for (benchmarks/store_codecs.py,
    benchmarks/README.md section "8-bit stores").

    e5m2 is the format for the fewest bytes: its codes take zstd with no filter (byte shuffle
    is a no-op at one byte); bit-shuffle would make them larger. e4m3 codes are bit-shuffled
    and take lz4hc at level 2: on them it stores nearly as few bytes as zstd and decodes
    faster, and decoding is what bounds the loader on a CPU. (Level 2 is LZ4's fast middle
    mode in the LZ4 that numcodecs' blosc bundles; an older LZ4 runs it as ordinary HC,
    slower to write, read the same way.) The 16-bit dtypes take zstd with bit-shuffle."""
    if dtype == "float8_e4m3":
        return Codec("blosc-lz4hc", 2, "bitshuffle")
    return Codec(shuffle="shuffle") if dtype == "float8_e5m2" else Codec()
