"""`actstore eval` on a run of transcoders: the seed paper's question asked of an MLP.

    store ── held-out contexts: input rows x and target rows y, aligned row by row
      ├─ each transcoder: FVU of y (raw units), L0, firing, top activations per latent
      ├─ the dense linear map (least squares from x to y on the training rows, with a
      │  bias: the skip a transcoder could learn alone) — its FVU at L0 = d_in
      └─ loss recovered: the target hook's activations replaced in the model by each
         transcoder's prediction, and by the linear map's, computed from the input hook in
         the same pass (one layer: a replacement model)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from actstore.loader import holdout
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.evaluation import baselines
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.examples import TopActivations, TopCollector
from trainer.evaluation.loss_recovered import splice_scores
from trainer.evaluation.run import Evaluation, evaluate, load_run, mmcs_between, open_slice
from trainer.parallel import distributed

#: Ridge term of the least-squares fit, relative to the mean diagonal of XᵀX: numerical
#: safety for collinear inputs, far below what changes the fit.
RIDGE = 1e-6


def paired(store: ActivationStore, hooks: tuple[str, str], part: holdout.Partition,
           rows: int) -> Iterator[tuple[holdout.HeldOutRows, torch.Tensor]]:
    """Held-out input batches and the same rows of the target hook."""
    for h in holdout.held_out_batches(store, hooks[0], part, rows, 4096):
        lo, hi = int(h.rows.min()), int(h.rows.max()) + 1
        y = torch.from_numpy(store.read_float32(hooks[1], lo, hi))[h.rows - lo]
        yield h, y


def score(member: Member, held: list[tuple[holdout.HeldOutRows, torch.Tensor]], top: int,
          device: torch.device, variance: float) -> tuple[dict[str, float], TopActivations]:
    """FVU of the target (raw units), L0 and firing of one transcoder on the slice, and its
    top rows; under torchrun each rank scores its share and the sums are merged."""
    tc = member.sae.to(device)
    collector = TopCollector(tc.cfg.latents, top)
    err, count = 0.0, 0
    for h, y in held[distributed.rank()::distributed.world_size()]:
        y_hat_n, codes = tc.infer(member.norm.apply(h.x.to(device)))
        y_hat = member.out_norm.invert(y_hat_n)
        err += float((y.to(device) - y_hat).double().pow(2).sum())
        count += len(y)
        collector.add(codes, h.rows)
    tops = collector.result()
    if distributed.world_size() > 1:
        err, total = distributed.sum_over_ranks([err, count])
        count = int(total)
        merged = TopCollector(tc.cfg.latents, top)
        for part in distributed.gather_objects(tops):
            merged.absorb(part)
        tops = merged.result()
    return {"fvu": err / max(variance, 1e-30), "l0": float(tops.fired.sum()) / count,
            "fired_fraction": float((tops.fired > 0).double().mean())}, tops


def fit_linear(store: ActivationStore, hooks: tuple[str, str], part: holdout.Partition,
               rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (d_in, d_out) and b minimising ‖x W + b − y‖² over up to `rows` training rows
    (normal equations in float64, summed over the ranks' blocks)."""
    fit = holdout.Partition(part.train or part.held_out, ())
    rank, world = distributed.rank(), distributed.world_size()
    d_in, d_out = (store.layout.d_model[h] for h in hooks)
    xtx = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
    xty = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
    for x, y in zip(holdout.training_sample(store, hooks[0], fit, rows, rank=rank, world=world),
                    holdout.training_sample(store, hooks[1], fit, rows, rank=rank, world=world),
                    strict=True):
        x1 = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
        xtx += x1.T @ x1
        xty += x1.T @ y.double()
    xtx = distributed.all_reduce(xtx)
    xty = distributed.all_reduce(xty)
    ridge = RIDGE * float(xtx.diagonal().mean())
    solution = torch.linalg.solve(xtx + ridge * torch.eye(d_in + 1, dtype=torch.float64), xty)
    return solution[:-1].float(), solution[-1].float()


def evaluate_run(cfg: EvalConfig) -> Evaluation:
    """`actstore eval`: a run of SAEs as `run.evaluate` scores it, a run of transcoders as
    `evaluate_transcoders` does."""
    members = load_run(cfg.run)
    if members[0].sae.cfg.kind != "transcoder":
        return evaluate(cfg)
    return evaluate_transcoders(cfg, members)


def evaluate_transcoders(cfg: EvalConfig, members: list[Member]) -> Evaluation:
    """Every transcoder of the run and the linear map on the held-out slice."""
    device = torch.device(resolve_device(cfg.device))
    store, part, held_out = open_slice(cfg, members[0])
    hooks = (members[0].source["hook"], members[0].source["target_hook"])
    held = list(paired(store, hooks, part, cfg.rows))
    if not held:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    y = torch.cat([t for _, t in held])
    variance = baselines.total_variance(y)
    scores, tops = {}, {}
    for m in members:
        scores[m.name], tops[m.name] = score(m, held, cfg.top, device, variance)
    w, b = fit_linear(store, hooks, part, cfg.fit_rows)
    share = held[distributed.rank()::distributed.world_size()]
    err = sum(float((t - (h.x @ w + b)).double().pow(2).sum()) for h, t in share)
    (err,) = distributed.sum_over_ranks([err])
    d_in = store.layout.d_model[hooks[0]]
    frontier: list[dict[str, float | str]] = [
        {"method": "linear", "k": d_in, "l0": float(d_in), "fvu": err / max(variance, 1e-30)}]
    frontier += [{"method": m.name, "k": m.sae.cfg.k or round(scores[m.name]["l0"]),
                  "l0": scores[m.name]["l0"], "fvu": scores[m.name]["fvu"]} for m in members]
    wd, bd = w.to(device), b.to(device)
    spliced, why = splice_scores(
        cfg, store, part, members, [], device=device,
        ks={m.name: m.sae.cfg.k or max(1, round(scores[m.name]["l0"])) for m in members},
        extra=[("linear", d_in, lambda h: h.float() @ wd + bd)])
    meta = {"run": str(cfg.run), "store": store.url, "store_key": store.key,
            "hook": hooks[0], "target_hook": hooks[1], "model": store.spec.model,
            "held_out": held_out, "rows": len(y), "held_out_shards": list(part.held_out),
            "ground_truth": False, "spliced": why, "kind": "transcoder",
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("run", "out")}}
    return Evaluation(meta, frontier, scores, {"linear": {}}, mmcs_between(members), tops, spliced)
