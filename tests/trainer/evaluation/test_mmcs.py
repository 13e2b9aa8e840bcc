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


def test_absorption_counts_parent_occurrences_taken_by_a_child() -> None:
    """Two parents with two children each, hand-made activity: the parent's latent silent
    where a child's latent fires is absorption; silent with no child firing is not."""
    from trainer.evaluation.mmcs import absorption

    truth = torch.eye(6)  # parents 0, 1; children 2, 3 (of 0) and 4, 5 (of 1)
    parents = torch.tensor([-1, -1, 0, 0, 1, 1])
    learned = truth[[5, 4, 3, 2, 1, 0]]  # latents in another order: matched by direction
    active = torch.tensor([[1, 0, 1, 0, 0, 0],    # parent 0 with child 2: absorbed
                           [1, 0, 0, 1, 0, 0],    # parent 0 with child 3: fires itself
                           [1, 0, 0, 0, 0, 0],    # parent 0 alone, silent: not absorbed
                           [0, 1, 0, 0, 0, 1],    # parent 1 with child 5: absorbed
                           [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    fired_truth = active.clone()
    fired_truth[0, 0] = fired_truth[2, 0] = fired_truth[3, 1] = False  # the parents' misses
    fired = fired_truth[:, [5, 4, 3, 2, 1, 0]]  # in the learned order
    out = absorption(fired, active, learned, truth, parents)
    assert out["parent_occurrences"] == 4
    assert out["absorption"] == pytest.approx(2 / 4)
    assert out["mmcs_parents"] == pytest.approx(1.0)
    assert absorption(active[:, [5, 4, 3, 2, 1, 0]], active, learned, truth,
                      parents)["absorption"] == 0


def test_hedging_and_a_childs_parent_component_are_read_off_the_decoder() -> None:
    """Orthogonal features; a parent latent that took in half of each child (hedging
    0.5 / sqrt(1.5)) and child latents that subtract 0.3 of their parent."""
    from trainer.evaluation.mmcs import mixtures

    truth = torch.eye(6)  # parents 0, 1; children 2, 3 (of 0) and 4, 5 (of 1)
    parents = torch.tensor([-1, -1, 0, 0, 1, 1])
    learned = truth.clone()
    assert mixtures(learned, truth, parents) == {"hedging": 0.0, "child_parent_cos": 0.0}
    learned[0] = truth[0] + 0.5 * (truth[2] + truth[3])
    learned[1] = truth[1] + 0.5 * (truth[4] + truth[5])
    for c, p in ((2, 0), (3, 0), (4, 1), (5, 1)):
        learned[c] = truth[c] - 0.3 * truth[p]
    out = mixtures(learned * 2.0, truth, parents)  # scale-free
    assert out["hedging"] == pytest.approx(0.5 / 1.5 ** 0.5)
    assert out["child_parent_cos"] == pytest.approx(-0.3 / 1.09 ** 0.5)


def test_absorption_reports_the_mmcs_and_mixtures_computed_alone() -> None:
    """Its MMCS over parents and children, and its mixtures, from one shared cosine matrix,
    equal `mmcs` and `mixtures` run on their own (random directions, other widths)."""
    from trainer.evaluation.mmcs import absorption, mixtures

    g = torch.Generator().manual_seed(3)
    truth, learned = torch.randn(9, 5, generator=g), torch.randn(14, 5, generator=g)
    parents = torch.tensor([-1, -1, -1, 0, 0, 1, 1, 2, 2])
    out = absorption(torch.zeros(4, 14, dtype=torch.bool), torch.zeros(4, 9, dtype=torch.bool),
                     learned, truth, parents)
    assert out["mmcs_parents"] == pytest.approx(mmcs(truth[:3], learned), rel=1e-12)
    assert out["mmcs_children"] == pytest.approx(mmcs(truth[3:], learned), rel=1e-12)
    assert {k: out[k] for k in ("hedging", "child_parent_cos")} == \
        mixtures(learned, truth, parents)
