"""`actstore eval` on a run of crosscoders: every site scored, and which latents live where.

    store ── held-out contexts: the rows of every site, aligned row by row
      ├─ each crosscoder: FVU of every site (raw units) and of all of them, L0, firing, the
      │  latents silent on every scored row, top activations per latent
      └─ its decoder: per latent, each site's share of its decoder norms, ‖d_l‖ / Σ_m ‖d_m‖
         (two sites, A and B: model diffing's relative norm ‖d_B‖ / (‖d_A‖ + ‖d_B‖) is the
         second site's share) ─▶ a histogram per site, and groups: latents with a share
         ≥ ONLY at one site ("only" that site), latents whose every share is ≥ SHARED / L
         ("shared"), the rest; the latents of each group that fire most are shown in the
         report with their top-activating contexts
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from actstore.loader import holdout
from actstore.loader.delivery import Normalizer
from actstore.loader.paired import SECOND, PairedStore
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.crosscoder import relative_norms, site_bounds
from trainer.dictionary.dictionaries import SparseDictionary
from trainer.dictionary.export import load_crosscoder
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.examples import TopActivations, TopCollector
from trainer.evaluation.run import Evaluation, open_slice
from trainer.parallel import distributed

__all__ = ["BINS", "ONLY", "SHARED", "evaluate_crosscoders", "groups", "is_crosscoder_run"]

#: A latent whose decoder has at least this share of its norm at one site is that site's only
#: (two sites: relative norm ≥ 0.9 is B-only, ≤ 0.1 A-only, the cut of Lindsey et al.'s plots).
ONLY = 0.9
#: A latent whose every site has at least SHARED / L of its decoder norm is shared (two
#: sites: a relative norm in [0.3, 0.7]).
SHARED = 0.6
#: Histogram bins of the shares over [0, 1].
BINS = 20
#: Latents shown per group in the report (those that fire most on the slice).
SHOWN = 5

Rows = list[tuple[holdout.HeldOutRows, torch.Tensor]]


def is_crosscoder_run(run: str) -> bool:
    """Whether the run's dictionaries are crosscoders."""
    first = next(iter(sorted((Path(run) / "dictionaries").glob("*/cfg.json"))), None)
    return (first is not None
            and json.loads(first.read_text())["dictionary"].get("kind") == "crosscoder")


class _Crosscoder:
    """One crosscoder of the run with its per-site normalisers."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.cc, self.norms, meta = load_crosscoder(path)
        self.source: dict[str, Any] = meta["source"]

    def member(self) -> Member:
        """As the SAE code paths take a dictionary (its first site's normaliser)."""
        return Member(self.name, self.cc, self.norms[0], self.source)


def site_rows(sites: list[tuple[ActivationStore, str]], part: holdout.Partition,
              rows: int) -> Rows:
    """Held-out batches: (the rows of the first site, every site's rows side by side)."""
    (first, hook), out = sites[0], []
    for h in holdout.held_out_batches(first, hook, part, rows, 4096):
        lo, hi = int(h.rows.min()), int(h.rows.max()) + 1
        rest = [torch.from_numpy(s.read_float32(k, lo, hi))[h.rows - lo] for s, k in sites[1:]]
        out.append((h, torch.cat([h.x, *rest], 1)))
    return out


def groups(shares: torch.Tensor) -> dict[str, torch.Tensor]:
    """Latent ids by where their decoder lives (`shares`: (latents, L), rows summing to 1):
    `only_site_l` and `shared` (the module docstring's cuts); the rest are in neither."""
    sites = shares.shape[1]
    out = {f"only_site_{i}": (shares[:, i] >= ONLY).nonzero().flatten() for i in range(sites)}
    out["shared"] = (shares.min(1).values >= SHARED / sites).nonzero().flatten()
    return out


def score_crosscoder(c: _Crosscoder, rows: Rows, top: int, device: torch.device,
                     variances: torch.Tensor) -> tuple[dict[str, float], TopActivations]:
    """FVU per site and overall, L0, firing; this rank's share of the batches, summed over
    ranks."""
    cc, bounds = c.cc.to(device), site_bounds(c.cc.cfg.sites)
    collector = TopCollector(cc.cfg.latents, top)
    err, count = torch.zeros(len(bounds), dtype=torch.float64), 0
    for h, batch in rows[distributed.rank()::distributed.world_size()]:
        x = batch.to(device)
        x_hat_n, codes = cc.infer(_normalised(x, c.norms, bounds))
        for i, ((a, b), n) in enumerate(zip(bounds, c.norms, strict=True)):
            err[i] += float((x[:, a:b] - n.invert(x_hat_n[:, a:b])).double().pow(2).sum())
        count += len(x)
        collector.add(codes, h.rows)
    tops = collector.result()
    if distributed.world_size() > 1:
        *errs, total = distributed.sum_over_ranks([*err.tolist(), count])
        err, count = torch.tensor(errs, dtype=torch.float64), int(total)
        merged = TopCollector(cc.cfg.latents, top)
        for part in distributed.gather_objects(tops):
            merged.absorb(part)
        tops = merged.result()
    out = {"fvu": float(err.sum() / variances.sum().clamp_min(1e-30)),
           "l0": float(tops.fired.sum()) / max(count, 1),
           "fired_fraction": float((tops.fired > 0).double().mean()),
           "dead": float((tops.fired == 0).sum())}
    for i in range(len(bounds)):
        out[f"fvu_site_{i}"] = float(err[i] / variances[i].clamp_min(1e-30))
    return out, tops


def _normalised(x: torch.Tensor, norms: list[Normalizer], bounds: list[tuple[int, int]]
                ) -> torch.Tensor:
    return torch.cat([n.apply(x[:, a:b]) for (a, b), n in zip(bounds, norms, strict=True)], 1)


def decoder_report(cc: SparseDictionary, tops: TopActivations
                   ) -> tuple[dict[str, float], dict[str, Any], list[int]]:
    """The relative decoder norms: per-site mean share and group sizes (scores), the
    histograms and groups (for the report), and the latents to show (each group's most
    firing)."""
    shares = relative_norms(cc.W_dec.detach().cpu(), cc.cfg.sites)
    found = groups(shares)
    scores = {f"share_site_{i}": float(shares[:, i].mean()) for i in range(shares.shape[1])}
    scores |= {name: float(len(ids)) for name, ids in found.items()}
    edges = torch.linspace(0, 1, BINS + 1)
    fired = tops.fired.cpu()
    show = {name: ids[torch.argsort(fired[ids], descending=True, stable=True)][:SHOWN]
            for name, ids in found.items()}
    detail = {"histogram_edges": edges.tolist(),
              "histograms": [torch.histc(shares[:, i], BINS, 0, 1).int().tolist()
                             for i in range(shares.shape[1])],
              "groups": {name: ids.tolist() for name, ids in found.items()},
              "shown": {name: ids.tolist() for name, ids in show.items()},
              "relative_norms": shares[:, -1].tolist() if shares.shape[1] == 2 else None}
    return scores, detail, sorted({i for ids in show.values() for i in ids.tolist()})


def evaluate_crosscoders(cfg: EvalConfig) -> Evaluation:
    """Every crosscoder of `cfg.run` on the held-out slice, and its decoder's sites."""
    if cfg.run is None:
        raise ValueError("crosscoders are scored from their run (--run)")
    device = torch.device(resolve_device(cfg.device))
    ccs = [_Crosscoder(p.parent)
           for p in sorted((Path(cfg.run) / "dictionaries").glob("*/cfg.json"))]
    hooks = list(ccs[0].source["hook"])
    if any(c.source["hook"] != hooks for c in ccs):
        raise ValueError(f"{cfg.run}: its crosscoders read different hooks")
    store, part, held_out = open_slice(cfg, ccs[0].member())
    rows = site_rows([(store, h) for h in hooks], part, cfg.rows)
    if not rows:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    x = torch.cat([r for _, r in rows])
    bounds = site_bounds(ccs[0].cc.cfg.sites)
    variances = torch.stack([(x[:, a:b] - x[:, a:b].mean(0)).double().pow(2).sum()
                             for a, b in bounds])
    scores, tops, details, shown = {}, {}, {}, {}
    for c in ccs:
        scores[c.name], tops[c.name] = score_crosscoder(c, rows, cfg.top, device, variances)
        more, details[c.name], shown[c.name] = decoder_report(c.cc, tops[c.name])
        scores[c.name] |= more
    frontier: list[dict[str, Any]] = [
        {"method": c.name, "k": c.cc.cfg.k or round(scores[c.name]["l0"]),
         "l0": scores[c.name]["l0"], "fvu": scores[c.name]["fvu"]} for c in ccs]
    meta = {"run": str(cfg.run), "store": store.url, "store_key": store.key, "hook": hooks,
            "model": store.spec.model, "held_out": held_out, "rows": len(x),
            "held_out_shards": list(part.held_out), "ground_truth": False,
            "spliced": "skipped (crosscoders are not spliced)", "kind": "crosscoder",
            "sites": [{"store": store.second.url, "hook": h.removesuffix(SECOND)}
                      if isinstance(store, PairedStore) and h.endswith(SECOND)
                      else {"store": store.url, "hook": h} for h in hooks],
            "crosscoder": details, "show_latents": shown,
            "cuts": {"only": ONLY, "shared": SHARED},
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("run", "out")}}
    return Evaluation(meta, frontier, scores, {}, [], tops, [])
