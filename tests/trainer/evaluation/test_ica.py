"""FastICA (trainer.evaluation.ica) on mixed sources, against scikit-learn, and from a
streamed covariance."""

from __future__ import annotations

import pytest
import torch

from trainer.evaluation.baselines import (
    moments,
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
