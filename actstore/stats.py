"""Per-hook running statistics, mergeable across writers (each shard carries its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    def of(cls, rows: NDArray[Any], block: int = 512,
           convert: Callable[[NDArray[Any]], NDArray[Any]] | None = None) -> HookStats:
        """Statistics of a (n, d_model) array, accumulated in float64.

        Converted a block of rows at a time (`convert` first, e.g. bf16 bits to float32): a
        cache-sized float64 copy is as exact as a whole one, and a whole-shard copy cost more
        than compressing the shard (profiled on benchmarks/store_codecs.py).
        """
        if rows.ndim != 2:
            raise ValueError(f"expected a (rows, d_model) array, got shape {rows.shape}")
        n, d = rows.shape
        if n == 0:
            return cls.empty(d)
        total, sq = np.zeros(d), 0.0
        for i in range(0, n, block):
            part = rows[i:i + block]
            b = np.asarray(convert(part) if convert else part, dtype=np.float64)
            total += b.sum(axis=0)
            sq += float(np.vdot(b, b))
        return cls(count=n, mean=total / n, mean_sq_norm=sq / n)

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
