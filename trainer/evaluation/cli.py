"""`actstore eval --run DIR --out REPORT`: flags parse into one `EvalConfig`, then it runs."""

from __future__ import annotations

from typing import Any

from actstore.shell.flags import Command, field_help
from trainer.evaluation.config import EvalConfig


def add_eval_parser(sub: Any) -> None:
    e = sub.add_parser(
        "eval", help="score a run's dictionaries against PCA, ICA, neurons on held-out rows",
        description="Score every dictionary of a training run and the seed paper's baselines "
        "(PCA from the streamed covariance, FastICA, the neuron basis, a random basis) on the "
        "held-out slice of its store at equal L0; MMCS against a toy store's ground truth and "
        "between dictionary sizes; loss recovered with each reconstruction spliced into the "
        "model; the top-activating contexts of a sample of latents. Writes "
        "eval.json, latents.json, report.md, frontier.png and a self-contained index.html.")

    def h(name: str) -> str:
        return field_help(EvalConfig, name)
    e.add_argument("--run", "--run-dir", dest="run", required=True,
                   help=h("run") + "; spell it --run-dir under torchrun, whose own parser "
                   "takes --run for its --run-path")
    e.add_argument("--out", required=True, help=h("out"))
    e.add_argument("--store", help=h("store"))
    e.add_argument("--ica-rows", type=int, help=h("ica_rows"))
    for name, kind in (("rows", int), ("fit_rows", int), ("top", int), ("show", int),
                       ("window", int), ("splice_contexts", int), ("seed", int)):
        e.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name,
                       default=getattr(EvalConfig, name), help=h(name))
    e.add_argument("--ks", type=int, nargs="+", default=list(EvalConfig.ks), help=h("ks"))
    e.add_argument("--ica", choices=["logcosh", "cube", "none"], default="logcosh",
                   help=h("ica"))
    e.add_argument("--on-training-rows", action="store_true", help=h("on_training_rows"))
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=h("device"))


def run_eval(args: dict[str, Any]) -> int:
    """Under torchrun the ranks share the work: PCA's covariance (each streams its own blocks
    of training rows), the dictionaries' scores and top activations and the baselines'
    frontier (each its share of the held-out rows); sums and top lists are merged, FastICA is
    fitted on rank 0 and sent to the others, and rank 0 writes the report."""
    from actstore.store.activation_store import ActivationStore
    from trainer.evaluation.report import write_report
    from trainer.evaluation.run import evaluate
    from trainer.parallel import distributed

    cfg = EvalConfig(**{**args, "ks": tuple(args["ks"])})
    world = distributed.setup(cfg.device)
    try:
        ev = evaluate(cfg)
        if world.is_main:
            out = write_report(ev, ActivationStore.open(ev.meta["store"]), cfg)
            recovered = {r["method"]: r["recovered"] for r in ev.spliced}
            for name, s in ev.dictionaries.items():
                print(f"{name}: L0 {s['l0']:.2f}  FVU {s['fvu']:.4f}"
                      + (f"  MMCS {s['mmcs']:.3f}" if "mmcs" in s else "")
                      + (f"  recovered {recovered[name]:.4f}" if name in recovered else ""))
            print(f"report: {out}/index.html ({out}/report.md, {out}/eval.json)")
        distributed.barrier()
    finally:
        distributed.teardown(world)
    return 0


COMMAND = Command("eval", add_eval_parser, run_eval)
"""`actstore eval` (registered as an `actstore.commands` entry point)."""
