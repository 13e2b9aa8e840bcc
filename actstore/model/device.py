"""Which device a command runs on when the user leaves it to us."""

from __future__ import annotations

import torch


def resolve_device(device: str | None) -> str:
    """`auto` (or unset) is cuda when a CUDA device is visible, else cpu; anything else is
    returned as given."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_dtype(device: str) -> str:
    """A model's dtype when none is asked for: bfloat16 on a GPU, float32 on a CPU (where
    bfloat16 matmuls are slow)."""
    return "bfloat16" if device == "cuda" else "float32"
