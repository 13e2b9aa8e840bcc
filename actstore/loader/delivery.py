"""A batch's stored bits turned into what the consumer asked for, on its device.

    window slices (stored bits: bf16 as uint16, 8-bit codes with their row scales)
      ──CPU: one compiled pass (bf16, 8-bit) or numpy, in the consumer's thread──▶
      ──CUDA: pinned copy of the stored bits, then widen/dequantise/normalise on the GPU──▶
    (rows, d_model) tensors of the asked dtype, normalised

On a CPU a batch is made in one single-threaded pass, compiled (`quant.kernels`: bf16 and
8-bit rows) or numpy: torch's intra-op threads kept spinning after each call and took CPU
from the read threads (benchmarks/README.md, `fp8_store.py` and
`loader_throughput.py`). Making batches in a pool of threads instead, a few ahead of the
consumer, was tried: their CPU cost doubled there (not traced), and epochs ran slower.
The same IEEE float32 operations run in the same order on both devices: the same bits.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

from actstore.store import format as fmt
from actstore.store import quant
from actstore.store.activation_store import ActivationStore
from actstore.store.spec import StorageDtype


class Normalizer(NamedTuple):
    """x -> (x - mean) * scale, from a store's statistics; `mean` is None when not centering."""

    mean: torch.Tensor | None
    """Per-dimension mean subtracted first (float32), or None."""
    scale: float
    """Factor making E||x||^2 = d_model afterwards."""

    @classmethod
    def of(cls, store: ActivationStore, hook: str,
           mode: Literal["none", "scale", "center_scale"],
           shards: tuple[int, ...] | None = None) -> Normalizer:
        """From the statistics of the given shards (all when None)."""
        if mode == "none":
            return cls(None, 1.0)
        stats = store.stats(hook, shards)
        d = store.layout.d_model[hook]
        if mode == "scale":
            return cls(None, float(np.sqrt(d / stats.mean_sq_norm)))
        variance = stats.mean_sq_norm - float(stats.mean @ stats.mean)
        return cls(torch.from_numpy(stats.mean).float(), float(np.sqrt(d / variance)))

    @property
    def identity(self) -> bool:
        return self.mean is None and self.scale == 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.mean is None else x - self.mean.to(x.device)
        return y * self.scale

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        x = y / self.scale
        return x if self.mean is None else x + self.mean.to(x.device)


def on_cpu(host: tuple[torch.Tensor, ...], stored: StorageDtype, norm: Normalizer,
           want: torch.dtype | None) -> torch.Tensor:
    """Values of one batch on the CPU: `want` (None: the store's), normalised in float32 and
    cast last (bf16 arithmetic would add error). A lossless batch that needs neither stays a
    view of the window."""
    raw = host[0].numpy()
    scales = host[1].numpy() if len(host) == 2 else None
    logical = fmt.torch_dtype(stored)
    want = want or logical
    if scales is None and norm.identity and (want == logical or stored != "bfloat16"):
        t = host[0].view(torch.bfloat16) if stored == "bfloat16" else host[0]
        return t.to(want)
    mean = None if norm.mean is None else norm.mean.numpy()
    x = fmt.to_float32(raw, stored, scales, mean, norm.scale)  # one pass (bf16, 8-bit)
    t = torch.from_numpy(x)
    return t if want == torch.float32 else t.to(want)


def on_cuda(host: tuple[torch.Tensor, ...], stored: StorageDtype, norm: Normalizer,
            want: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """Values of one batch on a GPU: the stored bits cross PCIe (8-bit codes as 8 bits) from
    pinned memory, asynchronously, in the consumer's thread and stream."""
    if stored == "bfloat16":
        host = (host[0].view(torch.bfloat16),)
    parts = tuple(p.pin_memory().to(device, non_blocking=True) for p in host)
    t = parts[0] if len(parts) == 1 else quant.dequantise(parts[0], parts[1], stored)
    want = want or t.dtype
    return t.to(want) if norm.identity else norm.apply(t.float()).to(want)
