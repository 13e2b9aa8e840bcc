"""The seed paper's baselines: exact streamed PCA, FastICA in PyTorch (against known sources
and against scikit-learn's), top-k reconstructions at equal L0."""

from __future__ import annotations

import pytest
import torch

from trainer.evaluation.baselines import (
    frontier,
    ica_basis,
    moments,
    neurons,
    pca,
    random_basis,
    top_k_fvu,
)
from trainer.evaluation.ica import fast_ica


def mixed_sources(n: int = 20000, d: int = 6, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Independent non-Gaussian sources (Laplace and uniform), mixed by a random matrix."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, d // 2, generator=g, dtype=torch.float64) - 0.5  # Laplace by inversion
    lap = -torch.sign(u) * torch.log1p(-2 * u.abs())
    uni = torch.rand(n, d - d // 2, generator=g) * 2 - 1
    s = torch.cat([lap, uni], 1).double()
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return s @ a.T + 3.0, s, a


def best_match(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """For each true column, the largest |cosine| with any found column."""
    f = torch.nn.functional.normalize(found.double(), dim=0)
    t = torch.nn.functional.normalize(truth.double(), dim=0)
    return (t.T @ f).abs().max(1).values


def test_moments_stream_equals_the_whole() -> None:
    x = torch.randn(1000, 5, dtype=torch.float64) * torch.arange(1, 6) + 2
    m = moments(x.split(77))
    torch.testing.assert_close(m.mean, x.mean(0))
    torch.testing.assert_close(m.cov, torch.cov(x.T))
    assert m.rows == 1000


def test_fast_ica_recovers_mixed_sources() -> None:
    x, _, a = mixed_sources()
    for fun in ("logcosh", "cube"):
        fit = fast_ica(x, fun=fun, seed=1)  # type: ignore[arg-type]
        assert fit.converged
        assert float(best_match(fit.mixing, a).min()) >= 0.99, fun


def test_fast_ica_agrees_with_scikit_learn() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    x, _, _ = mixed_sources(seed=1)
    ours = fast_ica(x, seed=0)
    theirs = decomposition.FastICA(n_components=6, algorithm="parallel", fun="logcosh",
                                   whiten="unit-variance", random_state=0, max_iter=400)
    theirs.fit(x.numpy())
    assert float(best_match(ours.mixing, torch.from_numpy(theirs.mixing_)).min()) >= 0.99


def test_whitening_from_a_streamed_covariance_equals_the_sample_one() -> None:
    x, _, _ = mixed_sources(seed=2)
    m = moments(x.split(1000))
    a = fast_ica(x, seed=3)
    b = fast_ica(x, seed=3, cov=m.cov, mean=m.mean)
    torch.testing.assert_close(b.mixing, a.mixing, rtol=1e-3, atol=1e-3)


def test_top_k_reconstructions_and_the_frontier() -> None:
    g = torch.Generator().manual_seed(0)
    # variance concentrated in 2 directions of 8: PCA with k=2 explains nearly all of it
    x = torch.randn(4000, 2, generator=g) @ torch.randn(2, 8, generator=g) \
        + 0.01 * torch.randn(4000, 8, generator=g) + 1.0
    m = moments([x])
    bases = [pca(m), neurons(8, m.mean), random_basis(8, m.mean)]
    for b in bases:
        assert top_k_fvu(b, x, 8) == pytest.approx(0.0, abs=1e-6)  # complete: exact
        assert top_k_fvu(b, x, 0) == pytest.approx(1.0, rel=1e-3)  # nothing kept: the mean
    assert top_k_fvu(bases[0], x, 2) < 1e-3
    assert top_k_fvu(bases[1], x, 2) > 10 * top_k_fvu(bases[0], x, 2)
    rows = frontier(bases, x, [1, 2, 4])
    assert {(r["method"], r["k"]) for r in rows} == {(n, k) for n in ("pca", "neurons", "random")
                                                    for k in (1, 2, 4)}
    fit = fast_ica(x, 8, seed=0)
    assert top_k_fvu(ica_basis(fit), x, 8) == pytest.approx(0.0, abs=1e-4)
