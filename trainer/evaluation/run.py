"""`actstore eval`: a run's dictionaries and the seed paper's baselines, scored alike on the
held-out slice of the store the run trained on.

    run/dictionaries/<name>/ ──load──▶ dictionaries (their input normalisers)
    store ── training shards ──▶ streamed covariance ─▶ PCA; a sample ─▶ FastICA; neurons; random
          ── held-out shards ──▶ rows of contexts never trained on
                                  ├─ baselines: top-k codes by magnitude, k swept ─▶ FVU vs L0
                                  └─ dictionaries: FVU, L0, firing, top activations per latent
    ground truth (toy stores) ──▶ MMCS of every dictionary and baseline; MMCS between sizes

Every FVU is computed on raw activations (dictionaries' reconstructions are un-normalised), so
the numbers of all methods compare.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actstore.loader import holdout
from actstore.loader.ground_truth import Truth, load_truth
from actstore.loader.paired import pair
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.export import load_with_target
from trainer.evaluation import baselines
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.examples import TopActivations, TopCollector
from trainer.evaluation.ica import fast_ica
from trainer.evaluation.logit_lens import TokenEffects, token_effects
from trainer.evaluation.loss_recovered import splice_scores
from trainer.evaluation.mmcs import absorption, mmcs, recovered
from trainer.parallel import distributed


@dataclass(frozen=True)
class Evaluation:
    """Everything the report shows."""

    meta: dict[str, Any]
    """Run, store, hook, slice (held out or not, rows) and settings."""
    frontier: list[dict[str, Any]]
    """`{"method", "k", "l0", "fvu"}` for every baseline at every k and every dictionary."""
    dictionaries: dict[str, dict[str, float]]
    """Per dictionary: fvu, l0, fired fraction on the slice, and MMCS with a ground truth."""
    baselines: dict[str, dict[str, float]]
    """Per baseline: MMCS against the ground truth (toy stores), else empty."""
    mmcs_between: list[dict[str, Any]]
    """The paper's proxy without ground truth: MMCS of each smaller dictionary in larger ones."""
    tops: dict[str, TopActivations]
    """Per dictionary: top activations, firing counts, histograms over the slice."""
    spliced: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """`{"method", "k", "recovered", ...the splicer's metrics}` for every dictionary and every
    baseline at each dictionary's k: the model run with the reconstruction spliced in."""
    token_effects: dict[str, TokenEffects] = dataclasses.field(default_factory=dict)
    """Per dictionary of a causal LM's store: the tokens each latent promotes and suppresses
    (`logit_lens`; what was done, or why not, in meta["logit_lens"])."""


def load_run(run: str) -> list[Member]:
    """The dictionaries a run wrote (run/dictionaries/*/cfg.json), in name order."""
    folder = Path(run) / "dictionaries"
    found = sorted(p.parent for p in folder.glob("*/cfg.json"))
    if not found:
        raise FileNotFoundError(f"{run} holds no trained dictionary ({folder}/<name>/cfg.json):"
                                " pass the --out folder of a finished actstore train run")
    members = []
    for path in found:
        sae, norm, target, cfg = load_with_target(path)
        members.append(Member(path.name, sae, norm, cfg["source"], target))
    hooks = {(m.source["store_key"], m.source["hook"], m.source.get("target_hook"))
             for m in members}
    if len(hooks) > 1:
        raise ValueError(f"{run}: its dictionaries come from different stores or hooks {hooks}")
    return members


def open_slice(cfg: EvalConfig, first: Member) -> tuple[ActivationStore, holdout.Partition, bool]:
    """The store, its train/held-out partition as the run made it, and whether the scored rows
    are truly held out."""
    url = cfg.store or first.source["store"]  # two (a list): model diffing's pair
    store = pair(*url) if isinstance(url, list) else ActivationStore.open(url)
    if cfg.run is None:  # dictionaries from elsewhere only: none of them saw this store
        if store.num_shards < 2:
            raise ValueError(f"store {url} is one shard: the baselines need shards apart from "
                             "the scored ones to fit on (actstore generate --shard-mib)")
        return store, holdout.partition(store, cfg.holdout), True
    if store.key != first.source["store_key"]:
        raise ValueError(f"store {url} (key {store.key}) is not the store the run trained on "
                         f"(key {first.source['store_key']}, {first.source['store']})")
    fraction = float(first.source.get("train_config", {}).get("holdout", 0.0))
    part = holdout.partition(store, fraction)
    if part.held_out:
        return store, part, True
    if not cfg.on_training_rows:
        raise ValueError(f"{cfg.run} trained on every row of its store, so nothing is held "
                         "out to score: train with --holdout (e.g. 0.1), or pass "
                         "--on-training-rows to score its last shard anyway")
    last = store.num_shards - 1  # scored "as if" held out; the report says otherwise
    return store, holdout.Partition(tuple(range(last)), (last,)), False


def fit_baselines(cfg: EvalConfig, store: ActivationStore, hook: str, part: holdout.Partition,
                  device: torch.device) -> list[baselines.Basis]:
    """PCA from the streamed covariance, FastICA on a sample, neurons, a random basis."""
    train = part.train or part.held_out
    fit = holdout.Partition(train, ())
    d = store.layout.d_model[hook]
    m = baselines.moments((b.to(device) for b in holdout.training_sample(
        store, hook, fit, cfg.fit_rows, rank=distributed.rank(),
        world=distributed.world_size())), d)
    out = [baselines.pca(m), baselines.neurons(d, m.mean.cpu()),
           baselines.random_basis(d, m.mean.cpu(), cfg.seed)]
    if cfg.ica != "none":  # fitted once, on rank 0, and sent to the others
        basis = None
        if distributed.rank() == 0:
            rows = cfg.ica_rows or (1 << 20 if device.type == "cuda" else 1 << 16)
            sample = torch.cat(list(holdout.training_sample(store, hook, fit, rows)))
            ica = fast_ica(sample.to(device), fun=cfg.ica, seed=cfg.seed, cov=m.cov,
                           mean=m.mean)
            basis = baselines.ica_basis(ica).to(torch.device("cpu"))  # sent as CPU tensors
        out.append(distributed.broadcast_object(basis))
    return [b.to(torch.device("cpu")) for b in out]


def score(member: Member, held: list[holdout.HeldOutRows], top: int, device: torch.device,
          variance: float, *, targets: list[torch.Tensor] | None = None, sample: int = 0
          ) -> tuple[dict[str, float], TopActivations]:
    """FVU (raw units), L0 and firing of one dictionary on the slice, and its top rows;
    `variance` is the slice's Σ‖y − mean‖², FVU's denominator for every method, where y is
    what the dictionary reconstructs: the rows themselves, or a transcoder's `targets` (one
    per batch of `held`). Under torchrun each rank scores its share of `held` (every
    world-th batch) and the sums and top lists are merged, so every rank returns what one
    process would. `sample`: random firings kept per latent as well (`TopCollector`)."""
    sae = member.sae.to(device)
    collector = TopCollector(sae.cfg.latents, top, sample=sample)
    err, count = 0.0, 0
    pairs = list(zip(held, targets or [h.x for h in held], strict=True))
    for h, y in pairs[distributed.rank()::distributed.world_size()]:
        y_hat_n, codes = sae.infer(member.norm.apply(h.x.to(device)))
        y_hat = member.out_norm.invert(y_hat_n)
        err += float((y.to(device) - y_hat).double().pow(2).sum())
        count += len(y)
        collector.add(codes, h.rows)
    tops = collector.result()
    if distributed.world_size() > 1:
        err, rows = distributed.sum_over_ranks([err, count])
        count = int(rows)
        merged = TopCollector(sae.cfg.latents, top, sample=sample)
        for part in distributed.gather_objects(tops):
            merged.absorb(part)
        tops = merged.result()
    fired = float((tops.fired > 0).double().mean())
    return {"fvu": err / max(variance, 1e-30), "l0": float(tops.fired.sum()) / count,
            "fired_fraction": fired}, tops


def evaluate(cfg: EvalConfig, members: list[Member] | None = None) -> Evaluation:
    """Score every dictionary of `cfg.run` (`members`, when already loaded) and every
    baseline on the held-out slice."""
    want = resolve_device(cfg.device)
    device = torch.device(want)
    members = members or load_run(cfg.run_dir)
    hook = members[0].source["hook"]
    store, part, held_out = open_slice(cfg, members[0])
    if members[0].sae.cfg.kind == "transcoder":
        raise ValueError(f"{cfg.run} holds transcoders: trainer.evaluation.multihook.transcoders "
                         "scores them (actstore eval does so by itself)")
    held = list(holdout.held_out_batches(store, hook, part, cfg.rows, 4096))
    if not held:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    x = torch.cat([h.x for h in held])
    variance = baselines.total_variance(x)
    bases = fit_baselines(cfg, store, hook, part, device)
    scores, tops, ks = {}, {}, set(cfg.ks)
    for m in members:
        scores[m.name], tops[m.name] = score(m, held, cfg.top, device, variance,
                                             sample=cfg.quantile_examples)
        ks.add(m.sae.cfg.k or max(1, round(scores[m.name]["l0"])))
    share = x[distributed.rank()::distributed.world_size()]  # rows, each rank its own
    frontier = baselines.frontier(bases, share, sorted(k for k in ks if k <= x.shape[1]),
                                  variance, reduce=distributed.sum_over_ranks)
    frontier += [{"method": m.name, "k": m.sae.cfg.k or round(scores[m.name]["l0"]),
                  "l0": scores[m.name]["l0"], "fvu": scores[m.name]["fvu"]} for m in members]
    full = load_truth(store)
    truth = full.features if full is not None else None
    base_scores: dict[str, dict[str, float]] = {b.name: {} for b in bases}
    if truth is not None:
        for m in members:
            w = m.sae.W_dec.detach().cpu()
            scores[m.name] |= {"mmcs": mmcs(truth, w), "recovered_0.9": recovered(truth, w)}
        for b in bases:
            base_scores[b.name] = {"mmcs": mmcs(truth, b.decoder)}
    if full is not None and full.parents is not None:
        for m in members:  # a hierarchical toy: which parents its children absorb
            scores[m.name] |= _absorption(m, held, full, device)
    spliced, why = splice_scores(cfg, store, part, members, bases, device=device, ks={
        m.name: m.sae.cfg.k or max(1, round(scores[m.name]["l0"])) for m in members})
    effects, lens = token_effects(members, store, cfg.logit_tokens) if distributed.rank() == 0 \
        else ({}, "")  # only rank 0 writes the report
    meta = {"run": cfg.run, "store": store.url, "store_key": store.key, "hook": hook,
            "model": store.spec.model, "held_out": held_out, "rows": len(x),
            "held_out_shards": list(part.held_out), "ground_truth": truth is not None,
            "spliced": why, "imported": imported_meta(members), "logit_lens": lens,
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("run", "out")}}
    return Evaluation(meta, frontier, scores, base_scores, mmcs_between(members), tops, spliced,
                      effects)


def imported_meta(members: list[Member]) -> dict[str, dict[str, Any]]:
    """Per dictionary from elsewhere (`--dictionary`): its format, folder and recorded hook."""
    return {m.name: {k: m.source.get(k) for k in ("format", "path", "trained_on")}
            for m in members if "format" in m.source}


def _absorption(member: Member, held: list[holdout.HeldOutRows], truth: Truth,
                device: torch.device) -> dict[str, float]:
    """`mmcs.absorption` on the held-out rows, their true codes regenerated from the law."""
    law, parents = truth.law, truth.parents
    assert law is not None
    assert parents is not None
    fired, active = [], []
    for h in held:
        _, codes = member.sae.to(device).infer(member.norm.apply(h.x.to(device)))
        f = torch.zeros(len(h.x), member.sae.cfg.latents, dtype=torch.bool)
        f[codes.rows.cpu(), codes.cols.cpu()] = True
        fired.append(f)
        lo = int(h.rows.min())
        active.append(law.codes(lo, int(h.rows.max()) + 1)[h.rows - lo] > 0)
    return absorption(torch.cat(fired), torch.cat(active), member.sae.W_dec.detach(),
                      truth.features, parents)


def mmcs_between(members: list[Member]) -> list[dict[str, Any]]:
    """MMCS of each smaller dictionary's directions in each larger one."""
    out = []
    for a, b in itertools.combinations(sorted(members, key=lambda m: m.sae.cfg.latents), 2):
        if a.sae.cfg.latents < b.sae.cfg.latents:
            out.append({"smaller": a.name, "larger": b.name,
                        "mmcs": mmcs(a.sae.W_dec.detach(), b.sae.W_dec.detach())})
    return out


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
