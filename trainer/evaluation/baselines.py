"""The seed paper's baselines, scored like the dictionaries: PCA, ICA, the neuron basis and a
random orthogonal basis, each a linear code cut to its top k by magnitude.

    codes  c = (x - mean) @ encoder              (d, m) encoder
    keep   each row's k largest |c|              equal L0 = k
    x̂      = c_k @ decoder + mean                (m, d) decoder

FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the rows scored. PCA's basis comes from the exact
covariance, streamed over the store in float64 (`moments`), so it sees every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from actstore.loader import holdout
from actstore.store.activation_store import ActivationStore
from trainer.evaluation.ica import ICAResult
from trainer.parallel import distributed


@dataclass(frozen=True)
class Basis:
    """A linear code with a name (`pca`, `ica`, `neurons`, `random`)."""

    name: str
    encoder: torch.Tensor
    """(d, m)."""
    decoder: torch.Tensor
    """(m, d)."""
    mean: torch.Tensor
    """(d,)."""

    def to(self, device: torch.device) -> Basis:
        return Basis(self.name, self.encoder.to(device), self.decoder.to(device),
                     self.mean.to(device))


@dataclass(frozen=True)
class Moments:
    """Mean and covariance of a stream of rows, in float64."""

    mean: torch.Tensor
    cov: torch.Tensor
    rows: int


def moments(batches: Iterable[torch.Tensor], d: int | None = None) -> Moments:
    """Exact mean and covariance over every row of `batches` (float64 sums, one pass). Under
    a process group each rank passes its own rows and the sums are all-reduced, so the
    result is that of every rank's rows together (`d` is needed by a rank that has none)."""
    from trainer.parallel import distributed

    total, outer, rows = None, None, 0
    for batch in batches:
        x = batch.double()
        total = x.sum(0) if total is None else total + x.sum(0)
        outer = x.T @ x if outer is None else outer + x.T @ x
        rows += len(x)
    if total is None or outer is None:
        if d is None:
            raise ValueError("moments need at least two rows")
        total = torch.zeros(d, dtype=torch.float64)
        outer = torch.zeros(d, d, dtype=torch.float64)
    count = torch.tensor([float(rows)], dtype=torch.float64, device=total.device)
    for t in (total, outer, count):
        distributed.all_reduce(t)
    rows = int(count.item())
    if rows < 2:
        raise ValueError("moments need at least two rows")
    mean = total / rows
    cov = (outer - rows * torch.outer(mean, mean)) / (rows - 1)
    return Moments(mean, cov, rows)


def pca(m: Moments) -> Basis:
    """Principal directions, largest variance first."""
    values, vectors = torch.linalg.eigh(m.cov)
    order = torch.argsort(values, descending=True)
    e = vectors[:, order].float()
    return Basis("pca", e, e.T.contiguous(), m.mean.float())


def neurons(d: int, mean: torch.Tensor) -> Basis:
    """The activations' own coordinates."""
    eye = torch.eye(d)
    return Basis("neurons", eye, eye, mean.float())


def random_basis(d: int, mean: torch.Tensor, seed: int = 0) -> Basis:
    """A random orthogonal basis (QR of a Gaussian matrix)."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    q = (q * torch.sign(torch.diagonal(r))).float()  # Haar-distributed
    return Basis("random", q, q.T.contiguous(), mean.float())


def ica_basis(fit: ICAResult) -> Basis:
    """ICA's components: codes from the unmixing, reconstructions from the mixing."""
    return Basis("ica", fit.unmixing.T.contiguous(), fit.mixing.T.contiguous(), fit.mean)


def top_k_fvu(basis: Basis, x: torch.Tensor, k: int) -> float:
    """FVU of `x` reconstructed from each row's k largest-magnitude codes."""
    return top_k_error(basis, x, k) / max(total_variance(x), 1e-30)


def top_k_error(basis: Basis, x: torch.Tensor, k: int) -> float:
    """Σ‖x − x̂‖² of `x` reconstructed from each row's k largest-magnitude codes."""
    x = x.float()
    return float((x - top_k_reconstruct(basis, x, k)).double().pow(2).sum())


def top_k_reconstruct(basis: Basis, x: torch.Tensor, k: int) -> torch.Tensor:
    """`x` (any leading shape) rebuilt from each row's k largest-magnitude codes."""
    codes = (x.float() - basis.mean) @ basis.encoder
    if k < codes.shape[-1]:
        keep = torch.topk(codes.abs(), k, dim=-1).indices
        codes = torch.zeros_like(codes).scatter_(-1, keep, codes.gather(-1, keep))
    return codes @ basis.decoder + basis.mean


def total_variance(x: torch.Tensor) -> float:
    """Σ‖x − mean(x)‖² over the rows (in float64): FVU's denominator."""
    x = x.double()
    return float((x - x.mean(0)).pow(2).sum())


def frontier(bases: Sequence[Basis], x: torch.Tensor, ks: Sequence[int],
             variance: float | None = None,
             reduce: Callable[[list[float]], list[float]] = list,
             ) -> list[dict[str, float | str]]:
    """FVU at each L0 = k for every basis: `{"method", "k", "l0", "fvu"}` rows. `x` may be one
    rank's share of the rows: `reduce` sums the errors over ranks and `variance` is that of
    all the rows (by default `x`'s own)."""
    pairs = [(b, k) for b in bases for k in ks]
    errors = reduce([top_k_error(b, x, k) for b, k in pairs])
    total = total_variance(x) if variance is None else variance
    return [{"method": b.name, "k": k, "l0": float(min(k, b.encoder.shape[1])),
             "fvu": e / max(total, 1e-30)} for (b, k), e in zip(pairs, errors, strict=True)]


#: Ridge term of the least-squares fit, relative to the mean diagonal of XᵀX: numerical
#: safety for collinear inputs, far below what changes the fit.
RIDGE = 1e-6


def fit_linear(store: ActivationStore, hooks: tuple[str, str], part: holdout.Partition,
               rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (d_in, d_out) and b minimising ‖x W + b − y‖² over up to `rows` training rows
    (normal equations in float64, summed over the ranks' blocks)."""
    fit = holdout.Partition(part.train or part.held_out, ())
    rank, world = distributed.rank(), distributed.world_size()
    d_in, d_out = (store.layout.d_model[h] for h in hooks)
    xtx = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    xty = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
    for x, y in zip(holdout.training_sample(store, hooks[0], fit, rows, rank=rank, world=world),
                    holdout.training_sample(store, hooks[1], fit, rows, rank=rank, world=world),
                    strict=True):
        x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
        xtx += x1.T @ x1
        xty += x1.T @ y.double()
    xtx = distributed.all_reduce(xtx)
    xty = distributed.all_reduce(xty)
    ridge = RIDGE * float(xtx.diagonal().mean())
    solution = torch.linalg.solve(xtx + ridge * torch.eye(d_in + 1, dtype=torch.float64), xty)
    return solution[:-1].float(), solution[-1].float()
