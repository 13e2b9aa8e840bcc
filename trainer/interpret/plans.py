"""Which windows each latent's explainer and scorers see (delphi's split, the seed paper's
simulation):

    windows ranked by the latent's largest activation in them
      ├─ the top `explain_examples`: the explainer's (activating tokens marked)
      └─ every other window of a context the explainer never saw:
           activating ones, sorted, cut into `quantiles` groups, sampled evenly ─┐
           windows where the latent is zero everywhere, sampled                 ─┴─▶ scored
    detection: scored windows unmarked, label 1 for activating
    fuzzing:   activating windows with their activating tokens marked (label 1) or as many
               other tokens marked (label 0, alternately), zero windows with random marks (0)
    simulation: a few scored windows of each kind, every token's true activation

No scored window shares a context with the explainer's (`LatentPlan.check`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import Windows


@dataclass(frozen=True)
class Fuzz:
    window: int
    marks: tuple[int, ...]
    """Marked positions inside the window."""
    label: int
    """1 when the marks are the latent's activating tokens."""


@dataclass(frozen=True)
class LatentPlan:
    """The windows of one latent's prompts."""

    latent: int
    explain: list[int]
    detection: list[tuple[int, int]]
    """(window, label) in prompt order."""
    fuzzing: list[Fuzz]
    simulation: list[int]

    def check(self, windows: Windows) -> None:
        """No window scored is from a context the explainer read (a leak would inflate every
        score)."""
        seen = {int(windows.context[w]) for w in self.explain}
        scored = ([w for w, _ in self.detection] + [f.window for f in self.fuzzing]
                  + self.simulation)
        leaked = seen & {int(windows.context[w]) for w in scored}
        if leaked:
            raise AssertionError(f"latent {self.latent}: contexts {sorted(leaked)} are both "
                                 "explained and scored")


def window_max(windows: Windows, acts: np.ndarray) -> np.ndarray:
    """(windows,) the largest activation of one latent in each window."""
    return np.maximum.reduceat(acts, windows.starts[:-1])


def plan_latent(latent: int, acts: np.ndarray, windows: Windows, cfg: InterpretConfig,
                rng: np.random.Generator) -> LatentPlan:
    """The windows of one latent (`acts`: its activation on every row)."""
    peak = window_max(windows, acts)
    ranked = np.argsort(-peak, kind="stable")
    explain = [int(w) for w in ranked[:cfg.explain_examples] if peak[w] > 0]
    seen = np.isin(windows.context, windows.context[explain])
    active = [int(w) for w in ranked if peak[w] > 0 and not seen[w]]
    groups = np.array_split(np.array(active, dtype=np.int64), cfg.quantiles)
    per = -(-cfg.score_examples // cfg.quantiles)
    picked = [int(w) for g in groups
              for w in rng.choice(g, min(per, len(g)), replace=False)][:cfg.score_examples]
    zero = np.flatnonzero((peak == 0) & ~seen)
    quiet = [int(w) for w in rng.choice(zero, min(cfg.score_examples, len(zero)), replace=False)]
    detection = [(w, 1) for w in picked] + [(w, 0) for w in quiet]
    order = rng.permutation(len(detection))
    detection = [detection[i] for i in order]
    fuzzing = fuzz_items(picked, quiet, acts, windows, rng)
    half = cfg.simulate_examples // 2
    spread = np.linspace(0, len(picked) - 1, cfg.simulate_examples - half).round().astype(int)
    simulation = ([picked[i] for i in dict.fromkeys(spread.tolist())] if picked else []) \
        + quiet[:half]
    return LatentPlan(latent, explain, detection, fuzzing, simulation)


def fuzz_items(picked: list[int], quiet: list[int], acts: np.ndarray, windows: Windows,
               rng: np.random.Generator) -> list[Fuzz]:
    """Activating windows marked right (even places) or wrong (odd), zero windows marked at
    random, shuffled. A wrong marking has as many marks as the right one would."""
    items, counts = [], []
    for i, w in enumerate(picked):
        a = acts[windows.rows(w)]
        hot = np.flatnonzero(a > 0)
        counts.append(len(hot))
        if i % 2 == 0:
            items.append(Fuzz(w, tuple(hot.tolist()), 1))
            continue
        cold = np.flatnonzero(a <= 0)
        marks = rng.choice(cold, min(len(hot), len(cold)), replace=False) if len(cold) else hot
        items.append(Fuzz(w, tuple(sorted(int(m) for m in marks)), 0))
    typical = max(1, int(np.median(counts))) if counts else 1
    for w in quiet:
        n = int(windows.starts[w + 1] - windows.starts[w])
        marks = rng.choice(n, min(typical, n), replace=False)
        items.append(Fuzz(w, tuple(sorted(int(m) for m in marks)), 0))
    return [items[i] for i in rng.permutation(len(items))]


def plan_method(acts: np.ndarray, latents: list[int], windows: Windows, cfg: InterpretConfig,
                name: str) -> list[LatentPlan]:
    """Every sampled latent's plan; each checked for leaks."""
    plans = []
    for j, latent in enumerate(latents):
        rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode()), latent])
        plan = plan_latent(latent, acts[:, j], windows, cfg, rng)
        plan.check(windows)
        plans.append(plan)
    return plans
