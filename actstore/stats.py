"""Per-hook running statistics, mergeable across writers (each shard carries its own)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
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
    def of(cls, rows: NDArray[Any]) -> HookStats:
        """Statistics of a (n, d_model) block, accumulated in float64."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a (rows, d_model) array, got shape {x.shape}")
        n = x.shape[0]
        if n == 0:
            return cls.empty(x.shape[1])
        return cls(count=n, mean=x.mean(axis=0), mean_sq_norm=float(np.einsum("ij,ij->", x, x) / n))

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
