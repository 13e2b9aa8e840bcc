"""`actstore generate`'s flags, checked once (`GenerateConfig`), and what a run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from actstore.model.device import default_dtype, resolve_device
from actstore.store.spec import BosPolicy, ContextPolicy, StorageDtype, StoreSpec


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `actstore generate` takes. Checked in __post_init__, read-only after."""

    model: str
    """Hugging Face model name or local path."""
    hooks: tuple[str, ...]
    """Module paths to capture (several in one pass)."""
    dataset: str
    """`builtin:pydoc`; .txt/.jsonl/.json/.parquet files, optionally .gz/.bz2/.xz/.zst: a file
    or a glob, local or at an fsspec URL (s3://bucket/c/*.jsonl.zst), or a remote folder; or a
    Hugging Face dataset by name or local folder."""
    out: str
    """Root URL; the store goes to `<out>/<key>`."""
    context_length: int = 128
    """Tokens per context, BOS included."""
    max_tokens: int | None = None
    """Upper bound on tokens fed to the model, BOS included (default: the whole dataset)."""
    revision: str | None = None
    """Model revision: commit, tag or branch (default: the latest; local folders have none)."""
    dataset_revision: str | None = None
    """Revision of a Hugging Face hub dataset (default: the latest). Files, folders and the
    embedded corpus are identified by their content instead."""
    split: str | None = None
    """Dataset split (HF datasets; default train)."""
    text_column: str | None = None
    """Column holding the text (default `text`)."""
    bos: BosPolicy = "keep"
    """keep: BOS row stored; drop: BOS fed, row not stored; none: no BOS."""
    context_policy: ContextPolicy = "pack"
    """pack documents into full contexts, or truncate one context per document."""
    store_dtype: StorageDtype = "bfloat16"
    """Storage dtype of activations (float8_e4m3/e5m2: 8 bits with a scale per row, and a
    noise floor shown by `actstore info`)."""
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Model dtype (default: bfloat16 on GPU, float32 on CPU)."""
    device: Literal["cuda", "cpu"] | None = None
    """Where workers run the model (default: cuda when Ray sees GPUs, else cpu)."""
    workers: int | None = None
    """Number of workers (default: one per GPU; on CPU, the cores Ray has divided by
    --cpus-per-worker)."""
    cpus_per_worker: float | None = None
    """CPUs each CPU worker reserves in Ray and runs torch threads on (default: the cores Ray
    has divided by --workers, else 1, so workers x threads = the cores)."""
    batch_size: int = 8
    """Contexts per forward pass."""
    shard_mib: int = 256
    """Raw size of a shard (the unit of work and of upload); lowered so every worker gets
    several shards on small stores."""
    address: str | None = None
    """Ray cluster address (default: RAY_ADDRESS, else a local Ray)."""
    executor: Literal["auto", "ray", "local"] = "auto"
    """ray: Ray workers; local: one worker in this process using every core, no Ray; auto:
    ray when a cluster (--address, RAY_ADDRESS), --workers or several GPUs are there, else
    local."""
    max_retries: int = 3
    """How often a shard is retried after its worker died."""
    worker_start_s: float = 900.0
    """Seconds a worker may take to start (be placed by Ray and load the model) before it
    counts as failed and a replacement is tried; the wait is reported every minute."""
    progress: bool = True
    """Show a progress bar."""
    verify: bool = False
    """After generating (or reusing), read every chunk and check exactly-once coverage."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for the store URL."""

    def __post_init__(self) -> None:
        checks = [
            (self.context_length >= 2, f"--context-length must be >= 2, got {self.context_length}"),
            (self.max_tokens is None or self.max_tokens >= self.context_length,
             f"--max-tokens ({self.max_tokens}) must be >= --context-length"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.workers is None or self.workers >= 1,
             f"--workers must be >= 1, got {self.workers}"),
            (self.shard_mib >= 1, f"--shard-mib must be >= 1, got {self.shard_mib}"),
            (self.cpus_per_worker is None or self.cpus_per_worker > 0,
             "--cpus-per-worker must be > 0"),
            (bool(self.hooks), "at least one --hook is needed"),
            (self.device != "cuda" or torch.cuda.is_available() or self.address is not None,
             "--device cuda but no CUDA device is visible"),
            (self.executor in ("auto", "ray", "local"),
             f"--executor must be auto, ray or local, got {self.executor!r}"),
            (self.executor != "local" or (self.address is None and (self.workers or 1) == 1),
             "--executor local runs one worker in this process: --address and --workers > 1 "
             "need --executor ray"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        StoreSpec(model=self.model, hooks=self.hooks, dataset=self.dataset,  # field checks
                  context_length=self.context_length, tokenizer="-", tokenizer_hash="-",
                  bos_policy=self.bos, context_policy=self.context_policy,
                  dtype=self.store_dtype)


@dataclass(frozen=True)
class GenerateResult:
    """What a run did."""

    url: str
    """The store."""
    reused: bool
    """True when the store was already complete."""
    tokens: int
    """Rows written by this run."""
    seconds: float
    """Wall time of this run."""
    compressed_bytes: int
    """Bytes of activation objects written by this run."""


def device_and_dtype(cfg: GenerateConfig) -> tuple[str, str]:
    """Where the workers run the model, and in which dtype."""
    device = resolve_device(cfg.device)
    return device, cfg.dtype or default_dtype(device)
