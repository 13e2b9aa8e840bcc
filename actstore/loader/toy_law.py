"""The generative law of a toy store (`actstore toy`), kept beside its ground truth so that
evaluation can regenerate which features are active in any row (absorption needs the true
codes, not only the directions).

    features   G random unit directions in d dimensions
    a row      x = Σ_i c_i f_i over its active features, c_i ~ U(0, 1); feature i is active with
               probability p_i ∝ decay^i, scaled so that Σ p_i = `active`
    correlation > 0: features come in pairs (2j, 2j+1); when 2j is active, 2j+1 is made active
               too with that probability
    hierarchy C > 0: the first P = G / (C + 1) features are parents (p_i ∝ decay^i over them,
               summing to active / 2) and feature P + p·C + c is child c of parent p; a child
               is active only with its parent, each with probability 1 / C when the parent is
               (one child per parent occurrence on average), as in the Matryoshka papers' toys

Rows are drawn in blocks of BLOCK from seeded generators, so any rows are drawn alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

__all__ = ["BLOCK", "ToyLaw"]

#: Rows drawn from one seeded generator: any slice of rows is drawn alone, whatever the shards.
BLOCK = 1 << 14


@dataclass(frozen=True)
class ToyLaw:
    """The knobs that fix a toy store's features and rows (`actstore toy`'s, less where the
    store goes and how many rows it has)."""

    d: int
    features: int
    active: float
    decay: float
    correlation: float
    seed: int
    hierarchy: int = 0

    def __post_init__(self) -> None:
        if self.hierarchy and (self.hierarchy < 1 or self.features % (self.hierarchy + 1)):
            raise ValueError(f"--hierarchy {self.hierarchy} needs --features divisible by "
                             f"{self.hierarchy + 1} (each parent and its children)")
        if self.hierarchy and self.correlation:
            raise ValueError("--hierarchy and --correlation are two different toys: pick one")

    @property
    def roots(self) -> int:
        """Features drawn by the decay law: all of them, or the parents of a hierarchy."""
        return self.features // (self.hierarchy + 1)

    def probabilities(self) -> torch.Tensor:
        """Each root feature's chance of being active: ∝ decay**i, summing to `active` (half
        of it for parents, whose children add the other half), capped at 1 with the excess
        spread over the others."""
        n = self.roots
        mass = self.active / 2 if self.hierarchy else self.active
        base = self.decay ** torch.arange(n, dtype=torch.float64)
        capped = torch.zeros(n, dtype=torch.bool)
        while True:  # scale the uncapped to the remaining mass; cap at 1; until none newly caps
            p = base * (mass - int(capped.sum())) / float(base[~capped].sum())
            p[capped] = 1.0
            over = (p > 1) & ~capped
            if not bool(over.any()):
                return p
            capped |= over

    def directions(self) -> torch.Tensor:
        """(G, d) unit rows."""
        g = torch.Generator().manual_seed(self.seed)
        f = torch.randn(self.features, self.d, generator=g, dtype=torch.float64)
        unit: torch.Tensor = (f / f.norm(dim=1, keepdim=True)).float()
        return unit

    def parents(self) -> torch.Tensor:
        """(G,) int64: each feature's parent, -1 for a root."""
        out = torch.full((self.features,), -1, dtype=torch.int64)
        if self.hierarchy:
            out[self.roots:] = torch.arange(self.roots).repeat_interleave(self.hierarchy)
        return out

    def coefficients(self, block: int) -> torch.Tensor:
        """(BLOCK, G) non-negative coefficients of the rows [block·BLOCK, (block+1)·BLOCK)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 1 + block)
        on = torch.rand(BLOCK, self.roots, generator=g) < self.probabilities().float()
        if self.correlation:
            pairs = self.features // 2
            follow = torch.rand(BLOCK, pairs, generator=g) < self.correlation
            on[:, 1:2 * pairs:2] |= on[:, 0:2 * pairs:2] & follow
        if self.hierarchy:
            child = torch.rand(BLOCK, self.features - self.roots, generator=g)
            with_parent = on.repeat_interleave(self.hierarchy, dim=1)
            on = torch.cat([on, with_parent & (child < 1 / self.hierarchy)], 1)
        return torch.rand(BLOCK, self.features, generator=g) * on

    def codes(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, G) coefficients of the rows [start, stop)."""
        out = torch.empty(stop - start, self.features)
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            first = block * BLOCK
            a, b = max(start, first), min(stop, first + BLOCK)
            out[a - start:b - start] = self.coefficients(block)[a - first:b - first]
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ToyLaw:
        return cls(**json.loads(text))
