"""`actstore eval` on a run of cross-layer transcoders: every target scored, and the
replacement model.

    store ── held-out contexts: the rows of every input hook and every target hook, aligned
      ├─ each CLT: FVU of every target (raw units) and of all of them, L0 (summed over layers,
      │  and per layer), firing, top activations per latent (latent ids layer-major: layer l's
      │  latent c is l · latents + c)
      ├─ the dense linear maps (least squares from each input to its own target, the skip a
      │  per-layer transcoder could learn alone): their FVU at L0 = d_in per layer
      └─ loss recovered: every target hook replaced at once in the model (the replacement
         model), each computed in the same pass from the inputs of its layer and the layers
         before it, by each CLT; and by the linear maps
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from actstore.loader import holdout
from actstore.loader.delivery import Normalizer
from actstore.loader.ground_truth import TOY_MODEL
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.clt_export import load_clt
from trainer.evaluation.baselines import fit_linear
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.examples import TopActivations, TopCollector
from trainer.evaluation.run import Evaluation, open_slice
from trainer.evaluation.splicer import LayerReplace, Splicer
from trainer.parallel import distributed

__all__ = ["evaluate_clts", "is_clt_run"]

Rows = list[tuple[holdout.HeldOutRows, torch.Tensor, torch.Tensor]]


def is_clt_run(run: str) -> bool:
    """Whether the run's dictionaries are cross-layer transcoders."""
    first = next(iter(sorted((Path(run) / "dictionaries").glob("*/cfg.json"))), None)
    return first is not None and json.loads(first.read_text())["dictionary"].get("kind") == "clt"


class _Clt:
    """One CLT of the run with its per-layer normalisers."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.clt, self.norms, self.target_norms, meta = load_clt(path)
        self.source: dict[str, Any] = meta["source"]

    def member(self) -> Member:
        """As the SAE code paths take a dictionary (its first layer's normalisers)."""
        return Member(self.name, self.clt, self.norms[0], self.source, self.target_norms[0])


def aligned(store: ActivationStore, inputs: list[str], targets: list[str],
            part: holdout.Partition, rows: int) -> Rows:
    """Held-out batches: (rows of the first input, (B, L, d_in) inputs, (B, L, d_out)
    targets)."""
    out = []
    for h in holdout.held_out_batches(store, inputs[0], part, rows, 4096):
        lo, hi = int(h.rows.min()), int(h.rows.max()) + 1

        def read(hook: str, lo: int = lo, hi: int = hi, h: holdout.HeldOutRows = h
                 ) -> torch.Tensor:
            return torch.from_numpy(store.read_float32(hook, lo, hi))[h.rows - lo]
        out.append((h, torch.stack([h.x, *map(read, inputs[1:])], 1),
                    torch.stack([read(t) for t in targets], 1)))
    return out


def score_clt(c: _Clt, rows: Rows, top: int, device: torch.device, variances: torch.Tensor
              ) -> tuple[dict[str, float], TopActivations]:
    """FVU per target and overall, L0 overall and per layer, firing; this rank's share of
    the batches, summed over ranks."""
    clt, layers = c.clt.to(device), c.clt.layers
    collector = TopCollector(clt.cfg.latents * layers, top)
    err, count = torch.zeros(layers, dtype=torch.float64), 0
    for h, x, y in rows[distributed.rank()::distributed.world_size()]:
        xn = torch.stack([n.apply(x[:, i].to(device)) for i, n in enumerate(c.norms)], 1)
        y_hat_n, codes = clt.infer(xn)
        y_hat = torch.stack([n.invert(y_hat_n[:, j]) for j, n in enumerate(c.target_norms)], 1)
        err += (y.to(device) - y_hat).double().pow(2).sum((0, 2)).cpu()
        count += len(y)
        collector.add(codes, h.rows)
    tops = collector.result()
    if distributed.world_size() > 1:
        *errs, total = distributed.sum_over_ranks([*err.tolist(), count])
        err, count = torch.tensor(errs, dtype=torch.float64), int(total)
        merged = TopCollector(clt.cfg.latents * layers, top)
        for part in distributed.gather_objects(tops):
            merged.absorb(part)
        tops = merged.result()
    per_layer = tops.fired.view(layers, -1).double().sum(1) / max(count, 1)
    out = {"fvu": float(err.sum() / variances.sum().clamp_min(1e-30)),
           "l0": float(per_layer.sum()), "fired_fraction": float((tops.fired > 0).double().mean())}
    for j in range(layers):
        out[f"fvu_layer_{j}"] = float(err[j] / variances[j].clamp_min(1e-30))
        out[f"l0_layer_{j}"] = float(per_layer[j])
    return out, tops


def evaluate_clts(cfg: EvalConfig) -> Evaluation:
    """Every CLT of `cfg.run` and the per-layer linear maps on the held-out slice."""
    device = torch.device(resolve_device(cfg.device))
    folder = Path(cfg.run_dir) / "dictionaries"
    clts = [_Clt(p.parent) for p in sorted(folder.glob("*/cfg.json"))]
    first = clts[0]
    inputs, targets = list(first.source["hook"]), list(first.source["target_hook"])
    if any((c.source["hook"], c.source["target_hook"]) != (inputs, targets) for c in clts):
        raise ValueError(f"{cfg.run_dir}: its CLTs read different hooks")
    store, part, held_out = open_slice(cfg, first.member())
    rows = aligned(store, inputs, targets, part, cfg.rows)
    if not rows:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    y = torch.cat([t for _, _, t in rows])
    variances = (y - y.mean(0)).double().pow(2).sum((0, 2))
    scores, tops = {}, {}
    for c in clts:
        scores[c.name], tops[c.name] = score_clt(c, rows, cfg.top, device, variances)
    maps = [fit_linear(store, (i, t), part, cfg.fit_rows)
            for i, t in zip(inputs, targets, strict=True)]
    err = sum(float((y_[:, j] - (x[:, j] @ w + b)).double().pow(2).sum())
              for _, x, y_ in rows[distributed.rank()::distributed.world_size()]
              for j, (w, b) in enumerate(maps))
    (err,) = distributed.sum_over_ranks([err])
    d_in = store.layout.d_model[inputs[0]]
    frontier: list[dict[str, Any]] = [
        {"method": "linear", "k": d_in, "l0": float(d_in * len(inputs)),
         "fvu": err / float(variances.sum().clamp_min(1e-30))}]
    frontier += [{"method": c.name, "k": c.clt.cfg.k or round(scores[c.name]["l0"]),
                  "l0": scores[c.name]["l0"], "fvu": scores[c.name]["fvu"]} for c in clts]
    spliced, why = _replacement_scores(cfg, store, part, clts, maps=maps, device=device,
                                        d_in=d_in)
    meta = {"run": str(cfg.run), "store": store.url, "store_key": store.key,
            "hook": inputs, "target_hook": targets, "model": store.spec.model,
            "held_out": held_out, "rows": len(y), "held_out_shards": list(part.held_out),
            "ground_truth": False, "spliced": why, "kind": "clt", "layers": len(inputs),
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("run", "out")}}
    return Evaluation(meta, frontier, scores, {"linear": {}}, [], tops, spliced)


def _replacement_scores(cfg: EvalConfig, store: ActivationStore, part: holdout.Partition,
                        clts: list[_Clt], *, maps: list[tuple[torch.Tensor, torch.Tensor]],
                        device: torch.device, d_in: int) -> tuple[list[dict[str, Any]], str]:
    """Loss recovered of each CLT's replacement model and of the linear maps' (rank 0
    computes, every rank gets it)."""
    if store.spec.model == TOY_MODEL or not cfg.splice_contexts:
        return [], "skipped (no model)" if cfg.splice_contexts else "skipped (--splice-contexts 0)"
    rows: list[dict[str, Any]] = []
    why = ""
    if distributed.rank() == 0:
        first = clts[0]
        inputs, targets = first.source["hook"], first.source["target_hook"]
        sources = list(zip(inputs, first.norms, strict=True))
        later = [(t, n, s) for t, n, s in zip(targets, first.target_norms, sources,
                                              strict=True)][1:]
        try:
            splicer = Splicer(store, targets[0], first.target_norms[0], cfg.splice_contexts,
                              device, first_context=holdout.first_held_out_context(store, part)
                              if part.held_out else 0, source=sources[0], layers=later)
        except Exception as e:
            why = f"skipped: the model {store.spec.model} failed to load ({e})"
        else:
            _check_same_normalisers(clts)
            results = splicer.evaluate([c.clt.to(device) for c in clts])
            on = [(w.to(device), b.to(device)) for w, b in maps]
            linear: LayerReplace = lambda j, xs: xs[j].float() @ on[j][0] + on[j][1]  # noqa: E731
            results += splicer.evaluate_layers([linear])
            names = [(c.name, c.clt.cfg.k or 0) for c in clts] + [("linear", d_in)]
            for (name, k), metrics in zip(names, results, strict=True):
                recovered = metrics.get("loss_recovered", metrics.get("final_state_recovered"))
                rows.append({"method": name, "k": k, "recovered": recovered, **metrics})
            why = f"{len(splicer.ids)} held-out contexts, all {len(inputs)} layers replaced"
    out: tuple[list[dict[str, Any]], str] = distributed.broadcast_object((rows, why))
    return out


def _check_same_normalisers(clts: list[_Clt]) -> None:
    """The splicer normalises with the first CLT's statistics: every CLT of a run has them
    (the store's, per hook); refuse rather than score one with another's."""
    def scales(ns: list[Normalizer]) -> list[float]:
        return [n.scale for n in ns]
    for c in clts[1:]:
        if (scales(c.norms), scales(c.target_norms)) != (scales(clts[0].norms),
                                                         scales(clts[0].target_norms)):
            raise ValueError(f"{c.name} was trained with other normalisation statistics than "
                             f"{clts[0].name}")
