"""The baselines (trainer.evaluation.baselines): streamed moments, top-k reconstructions
and the frontier."""

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


def test_moments_stream_equals_the_whole() -> None:
    x = torch.randn(1000, 5, dtype=torch.float64) * torch.arange(1, 6) + 2
    m = moments(x.split(77))
    torch.testing.assert_close(m.mean, x.mean(0))
    torch.testing.assert_close(m.cov, torch.cov(x.T))
    assert m.rows == 1000


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
