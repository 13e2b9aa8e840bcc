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
    mean_sq_error: float | None = None
    """8-bit stores: mean over rows of ‖x − q(x)‖², the exact row against its stored
    rounding (None for lossless dtypes). Over the variance, it is the store's noise floor."""

    @property
    def variance(self) -> float:
        """Mean squared distance of a row from the mean row (the denominator of FVU)."""
        return self.mean_sq_norm - float(self.mean @ self.mean)

    @property
    def noise_floor(self) -> float | None:
        """The FVU of the stored rows against the exact ones: a reconstruction this good or
        better cannot be told apart through the store (None when it is lossless)."""
        if self.mean_sq_error is None:
            return None
        return self.mean_sq_error / self.variance if self.variance > 0 else 0.0

    def with_quantisation_error(self, mean_sq_error: float) -> HookStats:
        return HookStats(self.count, self.mean, self.mean_sq_norm, mean_sq_error)

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
        sums = RowSums()
        sums.add(x, block=block)
        return sums.stats(x.shape[1])

    @classmethod
    def empty(cls, d_model: int) -> HookStats:
        return cls(count=0, mean=np.zeros(d_model), mean_sq_norm=0.0)

    def merge(self, other: HookStats) -> HookStats:
        """Statistics of the union of both row sets (weighted means, exact up to rounding)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        wa, wb = self.count / n, other.count / n
        error = (None if self.mean_sq_error is None or other.mean_sq_error is None
                 else wa * self.mean_sq_error + wb * other.mean_sq_error)
        return HookStats(count=n, mean=wa * self.mean + wb * other.mean,
                         mean_sq_norm=wa * self.mean_sq_norm + wb * other.mean_sq_norm,
                         mean_sq_error=error)

    @classmethod
    def merge_all(cls, parts: Iterable[HookStats], d_model: int) -> HookStats:
        total = cls.empty(d_model)
        for part in parts:
            total = total.merge(part)
        return total

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"count": self.count, "mean": self.mean.tolist(),
                             "mean_sq_norm": self.mean_sq_norm}
        if self.mean_sq_error is not None:  # lossless stores' markers stay as they were
            d["mean_sq_error"] = self.mean_sq_error
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookStats:
        error = d.get("mean_sq_error")
        return cls(count=int(d["count"]), mean=np.asarray(d["mean"], dtype=np.float64),
                   mean_sq_norm=float(d["mean_sq_norm"]),
                   mean_sq_error=None if error is None else float(error))


class RowSums:
    """`HookStats`' sums, added batch by batch on the rows' own device (float64 copies of a
    block of rows at a time): a GPU worker's exact rows never leave it for their statistics,
    and nothing waits until `stats()`."""

    def __init__(self) -> None:
        self.count = 0
        self._sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._quantised = False

    def add(self, rows: torch.Tensor, sq_error: torch.Tensor | None = None,
            block: int = 8192) -> None:
        """Rows (n, d) of any float dtype, and for 8-bit rows their quantisation's
        Σ‖x − q(x)‖² (float64)."""
        n, d = rows.shape
        if n == 0:
            return
        if self._sums is None:
            zeros = torch.zeros(d, dtype=torch.float64, device=rows.device)
            self._sums = (zeros, zeros.new_zeros(()), zeros.new_zeros(()))
        total, sq, err = self._sums
        for i in range(0, n, block):
            b = rows[i:i + block].to(torch.float64)
            total += b.sum(dim=0)
            flat = b.reshape(-1)
            sq += torch.dot(flat, flat)
        if sq_error is not None:
            err += sq_error
            self._quantised = True
        self.count += n

    def stats(self, d_model: int) -> HookStats:
        """The statistics of every row added (waits for the device)."""
        if self._sums is None or self.count == 0:
            return HookStats.empty(d_model)
        total, sq, err = (t.cpu() for t in self._sums)
        return HookStats(count=self.count, mean=(total / self.count).numpy(),
                         mean_sq_norm=float(sq) / self.count,
                         mean_sq_error=float(err) / self.count if self._quantised else None)
