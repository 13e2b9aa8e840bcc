"""`actstore eval --run DIR --out REPORT`: flags parse into one `EvalConfig`, then it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actstore.shell.flags import Command, Flag, add_fields, field_help, from_flags
from trainer.evaluation.config import EvalConfig

#: The flags in --help's order: what to score, how many rows, the baselines, where it runs.
_ORDER = ("run", "dictionary", "out", "store", "hook", "holdout", "any_hook", "ica_rows", "rows",
          "fit_rows", "top", "show", "window", "quantile_examples", "quantiles",
          "logit_tokens", "splice_contexts", "seed", "ks", "ica",
          "on_training_rows", "device", "log", "wandb_project", "wandb_entity", "wandb_name")


def add_eval_parser(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="score dictionaries (a run's, SAELens', sparsify's) against PCA, ICA, "
        "neurons on held-out rows",
        description="Score every dictionary of a training run, and dictionaries saved by "
        "SAELens or sparsify (--dictionary), and the seed paper's baselines "
        "(PCA from the streamed covariance, FastICA, the neuron basis, a random basis) on the "
        "held-out slice of its store at equal L0; MMCS against a toy store's ground truth and "
        "between dictionary sizes; loss recovered with each reconstruction spliced into the "
        "model; a browser of every latent (top and quantile examples, histogram, promoted "
        "tokens, search by token). Writes eval.json, latents.json, report.md, frontier.png, "
        "index.html and its latents/ folder.")
    add_fields(e, EvalConfig, only=_ORDER, overrides={"run": Flag(
        names=("--run", "--run-dir"),
        help=field_help(EvalConfig, "run") + "; spell it --run-dir under torchrun, whose own "
        "parser takes --run for its --run-path"),
        "dictionary": Flag(repeat=True)})


def run_eval(args: dict[str, Any]) -> int:
    """Under torchrun the ranks share the work: PCA's covariance (each streams its own blocks
    of training rows), the dictionaries' scores and top activations and the baselines'
    frontier (each its share of the held-out rows); sums and top lists are merged, FastICA is
    fitted on rank 0 and sent to the others, and rank 0 writes the report."""
    from actstore.store.activation_store import ActivationStore
    from trainer.evaluation.multihook.transcoders import evaluate_run
    from trainer.evaluation.report import write_report
    from trainer.evaluation.report.tracked import log_evaluation
    from trainer.parallel import distributed
    from trainer.tracking import trackers

    cfg = from_flags(EvalConfig, args)
    trackers.require(cfg.log)  # a missing library is named before any work
    world = distributed.setup(cfg.device)
    try:
        ev = evaluate_run(cfg)
        if world.is_main:
            out = write_report(ev, ActivationStore.open(ev.meta["store"]), cfg)
            recovered = {r["method"]: r["recovered"] for r in ev.spliced}
            for name, s in ev.dictionaries.items():
                print(f"{name}: L0 {s['l0']:.2f}  FVU {s['fvu']:.4f}"
                      + (f"  MMCS {s['mmcs']:.3f}" if "mmcs" in s else "")
                      + (f"  recovered {recovered[name]:.4f}" if name in recovered else ""))
            print(f"report: {out}/index.html ({out}/report.md, {out}/eval.json)")
            if cfg.log:
                folder = log_evaluation(cfg, ev, Path(out))
                print(f"logged to {', '.join(cfg.log)} in {folder}")
        distributed.barrier()
    finally:
        distributed.teardown(world)
    return 0


#: An interrupted eval keeps nothing that looks like a report (`write_report`): it starts over.
RESUME_HINT = "no report was written; rerun the same command"
COMMAND = Command("eval", add_eval_parser, run_eval, RESUME_HINT, config=EvalConfig)
"""`actstore eval` (registered as an `actstore.commands` entry point)."""
