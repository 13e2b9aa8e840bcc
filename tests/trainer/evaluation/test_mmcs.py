"""Mean max cosine similarity (trainer.evaluation.mmcs) of known dictionaries."""

from __future__ import annotations

import pytest
import torch

from trainer.evaluation.mmcs import mmcs, recovered


def test_mmcs_of_known_dictionaries() -> None:
    g = torch.Generator().manual_seed(0)
    truth = torch.nn.functional.normalize(torch.randn(20, 8, generator=g), dim=1)
    extra = torch.randn(30, 8, generator=g)
    both = torch.cat([extra, truth[torch.randperm(20, generator=g)] * 3])  # any scale, order
    assert mmcs(truth, both) == pytest.approx(1.0)
    assert mmcs(truth, both, chunk=7) == pytest.approx(1.0)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0].T  # orthonormal rows
    assert mmcs(basis, -basis) == pytest.approx(0.0, abs=1e-6)  # sign matters: codes are >= 0
    assert recovered(truth, both) == 1.0
    assert recovered(truth, extra) < 0.5
