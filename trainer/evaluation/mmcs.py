"""Mean max cosine similarity (Sharkey et al. 2022; the seed paper's measure of recovery):
for each ground-truth direction, the cosine of the closest dictionary direction, averaged.

    MMCS(truth, learned) = mean_g max_l cos(truth_g, learned_l)

Signed cosine: the codes are non-negative, so a latent pointing against a feature does not
recover it. Also the paper's proxy without ground truth: MMCS between dictionaries of
different sizes (the smaller one's directions found in the larger one).
"""

from __future__ import annotations

import torch


def mmcs(truth: torch.Tensor, learned: torch.Tensor, chunk: int = 4096) -> float:
    """MMCS of `learned` (n, d) directions against `truth` (G, d); chunked over the
    learned directions, so a large dictionary needs no (G, n) matrix."""
    t = torch.nn.functional.normalize(truth.double(), dim=1)
    best = torch.full((len(t),), -1.0, dtype=torch.float64)
    for start in range(0, len(learned), chunk):
        part = torch.nn.functional.normalize(learned[start:start + chunk].double().cpu(), dim=1)
        best = torch.maximum(best, (t @ part.T).max(1).values)
    return float(best.mean())


def recovered(truth: torch.Tensor, learned: torch.Tensor, threshold: float = 0.9) -> float:
    """Fraction of the ground-truth directions some learned direction matches with cosine
    above `threshold`."""
    t = torch.nn.functional.normalize(truth.double(), dim=1)
    part = torch.nn.functional.normalize(learned.double().cpu(), dim=1)
    return float(((t @ part.T).max(1).values > threshold).double().mean())


def recovery(truth: torch.Tensor, learned: torch.Tensor) -> dict[str, float]:
    """MMCS of a decoder against a ground truth, and the fraction of features recovered
    (cosine > 0.9): what a run on a toy store reports at its end."""
    return {"mmcs": mmcs(truth, learned), "recovered_0.9": recovered(truth, learned)}


def absorption(fired: torch.Tensor, active: torch.Tensor, learned: torch.Tensor,
               truth: torch.Tensor, parents: torch.Tensor) -> dict[str, float]:
    """Feature absorption on a hierarchical toy store (Chanin et al. 2024; the Matryoshka
    papers): each ground-truth feature is matched to its closest learned direction; for each
    parent, the fraction of its occurrences (rows where it is active) in which its latent
    stays silent while the latent of one of its active children fires, pooled over parents.
    `fired` (rows, n) and `active` (rows, G) are the same rows' learned and true activity;
    `parents` (G,) each feature's parent (-1: a root). Also MMCS over the parents alone (the
    general features absorption takes) and over the children, and the two decoder mixtures
    (`mixtures`)."""
    t, w, best, match = _matched(learned, truth)
    children = torch.nonzero(parents >= 0).flatten()
    tops = torch.unique(parents[children])
    kids = torch.stack([children[parents[children] == p] for p in tops])  # (P, C), equal C
    on = active[:, tops]
    silent = ~fired[:, match[tops]]
    child_fires = (active[:, kids] & fired[:, match[kids]]).any(2)
    occurrences = int(on.sum())
    return {"absorption": float((on & silent & child_fires).sum()) / max(occurrences, 1),
            "parent_occurrences": float(occurrences), "mmcs_parents": float(best[tops].mean()),
            "mmcs_children": float(best[children].mean()), **_mixtures(t, w, match, parents)}


def _matched(learned: torch.Tensor, truth: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit truth (G, d) and learned (n, d) rows, and for each feature the cosine of its
    closest learned direction and that direction's index (one (G, n) product, as `mmcs`'s)."""
    t = torch.nn.functional.normalize(truth.double(), dim=1)
    w = torch.nn.functional.normalize(learned.double().cpu(), dim=1)
    best, match = (t @ w.T).max(1)
    return t, w, best, match


def mixtures(learned: torch.Tensor, truth: torch.Tensor, parents: torch.Tensor
             ) -> dict[str, float]:
    """How a hierarchy's features mix in the decoder, each feature matched to its closest
    learned direction as in `absorption`:

    - `hedging`: the mean cosine of a parent's latent with each of its children (Chanin et
      al. 2025's feature hedging: a latent that must reconstruct its parent's occurrences
      without its children's latents takes in their average; 0 when the parent is learned
      alone, for orthogonal features);
    - `child_parent_cos`: the mean cosine of a child's latent with its parent; positive where
      the child's latent carries its parent (absorption's decoder side), negative where it
      subtracts what a hedged parent latent adds.
    """
    t, w, _, match = _matched(learned, truth)
    return _mixtures(t, w, match, parents)


def _mixtures(t: torch.Tensor, w: torch.Tensor, match: torch.Tensor, parents: torch.Tensor
              ) -> dict[str, float]:
    children = torch.nonzero(parents >= 0).flatten()
    mine = w[match[parents[children]]]  # each child's parent's latent
    return {"hedging": float((mine * t[children]).sum(1).mean()),
            "child_parent_cos": float((w[match[children]] * t[parents[children]]).sum(1).mean())}
