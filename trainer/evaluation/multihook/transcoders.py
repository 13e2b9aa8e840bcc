"""`actstore eval` on a run of transcoders: the seed paper's question asked of an MLP.

    store ── held-out contexts: input rows x and target rows y, aligned row by row
      ├─ each transcoder: FVU of y (raw units), L0, firing, top activations per latent
      ├─ the dense linear map (least squares from x to y on the training rows, with a
      │  bias: the skip a transcoder could learn alone) — its FVU at L0 = d_in
      ├─ the MLP's own neurons: held-out contexts run through the model, the input of the
      │  MLP's output projection (its hidden activations) kept at each row's k largest in
      │  magnitude and projected — FVU of the target at L0 = k, on those contexts' rows
      └─ loss recovered: the target hook's activations replaced in the model by each
         transcoder's prediction, and by the linear map's, computed from the input hook in
         the same pass (one layer: a replacement model)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from actstore.loader import holdout
from actstore.loader.holdout import held_out_contexts
from actstore.model.capture import Capture, hook_module, load_model
from actstore.model.device import resolve_device
from actstore.store.activation_store import ActivationStore
from trainer.evaluation import baselines
from trainer.evaluation.baselines import fit_linear
from trainer.evaluation.config import EvalConfig, Member
from trainer.evaluation.imported.members import imported
from trainer.evaluation.loss_recovered import splice_scores
from trainer.evaluation.multihook.clt import evaluate_clts, is_clt_run
from trainer.evaluation.multihook.crosscoder import evaluate_crosscoders, is_crosscoder_run
from trainer.evaluation.run import (
    Evaluation,
    evaluate,
    load_run,
    mmcs_between,
    open_slice,
    score,
)
from trainer.parallel import distributed


def paired(store: ActivationStore, hooks: tuple[str, str], part: holdout.Partition,
           rows: int) -> Iterator[tuple[holdout.HeldOutRows, torch.Tensor]]:
    """Held-out input batches and the same rows of the target hook."""
    for h in holdout.held_out_batches(store, hooks[0], part, rows, 4096):
        lo, hi = int(h.rows.min()), int(h.rows.max()) + 1
        y = torch.from_numpy(store.read_float32(hooks[1], lo, hi))[h.rows - lo]
        yield h, y


def projection_of(model: nn.Module, target_hook: str) -> str:
    """The MLP's output projection, whose input are its neurons: the module the target hook
    names when it is a linear map, else its last linear submodule (GPT-2's c_proj, Llama's
    down_proj, NeoX's dense_4h_to_h)."""
    name, reads_input = hook_module(target_hook)
    module = dict(model.named_modules())[name]
    linear = (nn.Linear, Conv1D)
    if isinstance(module, linear) and not reads_input:
        return name
    inner = [n for n, m in module.named_modules() if n and isinstance(m, linear)]
    if reads_input or not inner:
        raise ValueError(f"--target-hook {target_hook} is not an MLP's output (a linear map or "
                         "a module ending in one): no neurons to compare with")
    return f"{name}.{inner[-1]}"


def neuron_frontier(store: ActivationStore, target: str, part: holdout.Partition, *,
                    ks: list[int], contexts: int, device: torch.device
                    ) -> list[dict[str, float | str]]:
    """FVU of the target rebuilt from the MLP's k largest-magnitude neurons through its own
    output projection, at each k, on `contexts` held-out contexts run through the model."""
    spec = store.spec
    model = load_model(spec.model, spec.model_revision, torch.float32, device)
    proj = projection_of(model, target)
    project = dict(model.named_modules())[proj]
    first = holdout.first_held_out_context(store, part) if part.held_out else 0
    ids = held_out_contexts(store, contexts, first).to(device)
    hidden, y = [], []
    with Capture(model, (f"{proj}:input", target)) as cap:
        for chunk in torch.split(ids, 8):
            got = cap.run(chunk)
            hidden.append(got[f"{proj}:input"].flatten(0, 1))
            y.append(got[target].flatten(0, 1))
    h, t = torch.cat(hidden), torch.cat(y)
    variance = baselines.total_variance(t)
    rows: list[dict[str, float | str]] = []
    with torch.inference_mode():
        for k in ks:
            keep = torch.topk(h.abs(), min(k, h.shape[1]), dim=1).indices
            sparse = torch.zeros_like(h).scatter_(1, keep, h.gather(1, keep))
            err = float((t - project(sparse)).double().pow(2).sum())
            rows.append({"method": "neurons", "k": k, "l0": float(min(k, h.shape[1])),
                         "fvu": err / max(variance, 1e-30)})
    return rows


def evaluate_run(cfg: EvalConfig) -> Evaluation:
    """`actstore eval`: a run of SAEs as `run.evaluate` scores it, a run of transcoders as
    `evaluate_transcoders` does, a run of cross-layer transcoders as `clt.evaluate_clts`, a run
    of crosscoders as `crosscoder.evaluate_crosscoders`."""
    if cfg.run is None:  # dictionaries from elsewhere only
        return evaluate(cfg, imported(cfg, []))
    kind = ("cross-layer transcoders" if is_clt_run(cfg.run)
            else "crosscoders" if is_crosscoder_run(cfg.run) else None)
    members = [] if kind else load_run(cfg.run)
    if not kind and members[0].sae.cfg.kind != "transcoder":
        return evaluate(cfg, members + imported(cfg, members))
    if cfg.dictionary:
        raise ValueError(f"--dictionary scores SAEs beside a run of SAEs; {cfg.run} holds "
                         f"{kind or 'transcoders'}")
    if kind == "crosscoders":
        return evaluate_crosscoders(cfg)
    return evaluate_clts(cfg) if kind else evaluate_transcoders(cfg, members)


def evaluate_transcoders(cfg: EvalConfig, members: list[Member]) -> Evaluation:
    """Every transcoder of the run and the linear map on the held-out slice."""
    device = torch.device(resolve_device(cfg.device))
    store, part, held_out = open_slice(cfg, members[0])
    hooks = (members[0].source["hook"], members[0].source["target_hook"])
    pairs = list(paired(store, hooks, part, cfg.rows))
    if not pairs:
        raise ValueError(f"the held-out slice of {store.url} has no row of a whole context")
    held, targets = [h for h, _ in pairs], [t for _, t in pairs]
    y = torch.cat(targets)
    variance = baselines.total_variance(y)
    scores, tops = {}, {}
    for m in members:
        scores[m.name], tops[m.name] = score(m, held, cfg.top, device, variance, targets=targets,
                                             sample=cfg.quantile_examples)
    w, b = fit_linear(store, hooks, part, cfg.fit_rows)
    share = pairs[distributed.rank()::distributed.world_size()]
    err = sum(float((t - (h.x @ w + b)).double().pow(2).sum()) for h, t in share)
    (err,) = distributed.sum_over_ranks([err])
    d_in = store.layout.d_model[hooks[0]]
    frontier: list[dict[str, float | str]] = [
        {"method": "linear", "k": d_in, "l0": float(d_in), "fvu": err / max(variance, 1e-30)}]
    frontier += [{"method": m.name, "k": m.sae.cfg.k or round(scores[m.name]["l0"]),
                  "l0": scores[m.name]["l0"], "fvu": scores[m.name]["fvu"]} for m in members]
    neurons, neurons_why = _neurons(cfg, store, hooks[1], part, members=members, scores=scores,
                                    device=device)
    frontier += neurons
    wd, bd = w.to(device), b.to(device)
    spliced, why = splice_scores(
        cfg, store, part, members, [], device=device,
        ks={m.name: m.sae.cfg.k or max(1, round(scores[m.name]["l0"])) for m in members},
        extra=[("linear", d_in, lambda h: h.float() @ wd + bd)])
    meta = {"run": str(cfg.run), "store": store.url, "store_key": store.key,
            "hook": hooks[0], "target_hook": hooks[1], "model": store.spec.model,
            "held_out": held_out, "rows": len(y), "held_out_shards": list(part.held_out),
            "ground_truth": False, "spliced": why, "kind": "transcoder", "neurons": neurons_why,
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("run", "out")}}
    return Evaluation(meta, frontier, scores, {"linear": {}}, mmcs_between(members), tops, spliced)


def _neurons(cfg: EvalConfig, store: ActivationStore, target: str, part: holdout.Partition,
             *, members: list[Member], scores: dict[str, dict[str, float]],
             device: torch.device) -> tuple[list[dict[str, float | str]], str]:
    """The neuron baseline at the transcoders' L0s and --ks (rank 0 computes, every rank
    gets it), and what was done or why not."""
    if not cfg.splice_contexts:
        return [], "skipped (--splice-contexts 0)"
    rows: list[dict[str, float | str]] = []
    why = f"{cfg.splice_contexts} held-out contexts run through the model"
    if distributed.rank() == 0:
        ks = sorted(set(cfg.ks) | {m.sae.cfg.k or max(1, round(scores[m.name]["l0"]))
                                   for m in members})
        try:
            rows = neuron_frontier(store, target, part, ks=ks, contexts=cfg.splice_contexts,
                                   device=device)
        except (OSError, ValueError) as e:
            why = f"skipped: {e}"
            print(f"actstore eval: warning: the neuron baseline {why}", file=sys.stderr)
    out: tuple[list[dict[str, float | str]], str] = distributed.broadcast_object((rows, why))
    return out
