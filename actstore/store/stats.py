"""Per-hook running statistics, mergeable across writers (each shard carries its own)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray


@dataclass(frozen=True)
class HookStats:
    """Statistics of one hook's stored activations over `count` rows."""

    count: int
    """Rows summarised."""
    mean: NDArray[np.float64]
    """Per-dimension mean, shape (d_model,)."""
    mean_sq_norm: float
    """Mean of the squared L2 norm of a row: what SAE trainers normalise by."""

    @classmethod
    def of(cls, rows: NDArray[Any] | torch.Tensor, block: int = 4096) -> HookStats:
        """Statistics of a (n, d_model) array or tensor (bf16 included), accumulated in float64.

        Converted a block of rows at a time: a cache-sized float64 copy is as exact as a whole
        one, and torch's kernels do it several times faster than numpy's (benchmarks/README.md,
        section `store_codecs.py`), so statistics do not slow the writer down.
        """
        x = torch.as_tensor(rows)
        if x.ndim != 2:
            raise ValueError(f"expected a (rows, d_model) array, got shape {tuple(x.shape)}")
        n, d = x.shape
        if n == 0:
            return cls.empty(d)
        total = torch.zeros(d, dtype=torch.float64)
        sq = torch.zeros((), dtype=torch.float64)
        for i in range(0, n, block):
            b = x[i:i + block].to(torch.float64).reshape(-1, d)
            total += b.sum(dim=0)
            flat = b.reshape(-1)
            sq += torch.dot(flat, flat)
        return cls(count=n, mean=(total / n).numpy(), mean_sq_norm=float(sq) / n)

    @classmethod
    def empty(cls, d_model: int) -> HookStats:
        return cls(count=0, mean=np.zeros(d_model), mean_sq_norm=0.0)

    def merge(self, other: HookStats) -> HookStats:
        """Statistics of the union of both row sets (weighted means, exact up to rounding)."""
        n = self.count + other.count
        if n == 0:
            return self
        wa, wb = self.count / n, other.count / n
        return HookStats(count=n, mean=wa * self.mean + wb * other.mean,
                         mean_sq_norm=wa * self.mean_sq_norm + wb * other.mean_sq_norm)

    @classmethod
    def merge_all(cls, parts: Iterable[HookStats], d_model: int) -> HookStats:
        total = cls.empty(d_model)
        for part in parts:
            total = total.merge(part)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean.tolist(), "mean_sq_norm": self.mean_sq_norm}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookStats:
        return cls(count=int(d["count"]), mean=np.asarray(d["mean"], dtype=np.float64),
                   mean_sq_norm=float(d["mean_sq_norm"]))
