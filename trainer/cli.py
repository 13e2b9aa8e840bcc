"""`actstore train`: flags, or `--config FILE` (JSON/TOML, the same names) with flags on top.

Launch one process, or one per GPU with torchrun (the same command), e.g.
    torchrun --nproc-per-node 8 -m trainer.cli --config sweep.toml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from actstore.shell.flags import Command, field_help, run_command
from trainer.training.config import TrainConfig

#: Flags whose values are lists (a sweep): repeat or give several values.
_LISTS = {"latents": int, "k": int, "l1": float, "l0": float}


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train sparse dictionaries on a store (DDP under torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(t)


def add_arguments(t: argparse.ArgumentParser) -> None:
    """Every flag defaults to None: only flags given on the command line override the file
    (the defaults shown are TrainConfig's)."""
    def h(name: str, extra: str = "") -> str:
        return field_help(TrainConfig, name, extra, required="required: a flag or in --config")
    t.add_argument("--config", help="JSON or TOML file of these settings, by field name "
                   "(flags given as well override it)")
    t.add_argument("--store", help=h("store"))
    t.add_argument("--hook", help=h("hook"))
    t.add_argument("--arch", choices=["relu", "topk", "batchtopk", "jumprelu"], help=h("arch"))
    for name, kind in _LISTS.items():
        t.add_argument(f"--{name}", type=kind, nargs="+",
                       help=h(name, "; several values: a sweep, one dictionary each"))
    for name, kind in (("tokens", int), ("batch_size", int), ("lr", float),
                       ("warmup_steps", int), ("decay_start", float), ("grad_clip", float),
                       ("seed", int), ("init_rows", int), ("aux_coef", float),
                       ("dead_after_tokens", int), ("log_every", int),
                       ("checkpoint_every", int), ("eval_every", int), ("eval_contexts", int),
                       ("shuffle_buffer", int), ("read_threads", int), ("tp", int),
                       ("holdout", float)):
        t.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name, help=h(name))
    t.add_argument("--out", help=h("out"))
    t.add_argument("--normalize", choices=["none", "scale", "center_scale"],
                   help=h("normalize"))
    t.add_argument("--bias-init", choices=["geometric_median", "mean", "zeros"],
                   help=h("bias_init"))
    t.add_argument("--kernel", choices=["auto", "dense", "sparse"], help=h("kernel"))
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help=h("device"))
    t.add_argument("--resume", action="store_true", default=None, help=h("resume"))
    t.add_argument("--overwrite", action="store_true", default=None, help=h("overwrite"))
    t.add_argument("--no-autocast", action="store_false", dest="autocast", default=None,
                   help="no bf16 autocast on cuda (train in float32)")
    t.add_argument("--no-progress", action="store_false", dest="progress", default=None,
                   help="no progress bar")
    t.add_argument("--no-plots", action="store_false", dest="plots", default=None,
                   help="no PNG plots at the end")
    t.add_argument("--plan", action="store_true", default=None,
                   help="print the memory each device needs (parameters, gradients, Adam, "
                   "the step's buffers), what is free and what would fit; then exit "
                   "without training")


def config_from_args(args: dict[str, Any]) -> TrainConfig:
    """TrainConfig from parsed flags (None = not given) over an optional config file."""
    path = args.pop("config", None)
    given = {k: v for k, v in args.items() if v is not None}
    if path:
        return TrainConfig.from_file(path, given)
    return TrainConfig.from_dict(given)


def run_from_args(args: dict[str, Any]) -> int:
    """Train, or with --plan only print the memory plan."""
    plan = bool(args.pop("plan", None))
    cfg = config_from_args(args)
    return print_plan(cfg) if plan else run_train(cfg)


def print_plan(cfg: TrainConfig) -> int:
    """`--plan`: the memory model's prediction for this run on this rank's device."""
    import torch

    from actstore.store.activation_store import ActivationStore
    from actstore.store.format import storage_numpy_dtype
    from trainer.parallel.distributed import World, wants_cuda
    from trainer.parallel.mesh import data_parallel
    from trainer.training.memory import describe
    from trainer.training.train import check_against

    store = ActivationStore.open(cfg.store)
    device = torch.device("cuda" if wants_cuda(cfg.device) else "cpu")
    # launched (torchrun, Ray): this world; run by hand: a world of --tp ranks (dp = 1)
    world = World(0, int(os.environ.get("WORLD_SIZE", str(cfg.tp))), device, owns_group=False)
    check_against(cfg, store, world)  # the run's own checks: hook, store complete, batch, tp
    print(describe(cfg, store.layout.d_model[cfg.hook],
                   storage_numpy_dtype(store.spec.dtype).itemsize,
                   data_parallel(world.size, cfg.tp), device))
    return 0


def run_train(cfg: TrainConfig) -> int:
    from trainer.training.train import train

    result = train(cfg)
    if result.dictionaries and _is_main():
        print(f"trained {len(result.dictionaries)} dictionaries for {result.steps} steps, "
              f"{result.tokens} tokens; this run {result.tokens_this_run} tokens in "
              f"{result.seconds:.1f}s ({result.tokens_this_run / max(result.seconds, 1e-9):.0f} "
              f"tokens/s) -> {result.out}")
        for path, metrics in zip(result.dictionaries, result.final, strict=True):
            print(f"  {path.name}: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


RESUME_HINT = ("rerun the same command with --resume to continue from the last checkpoint")
COMMAND = Command("train", add_train_parser, run_from_args, RESUME_HINT)
"""`actstore train` (registered as an `actstore.commands` entry point)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m trainer.cli` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="actstore train", description=__doc__)
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    return run_command("actstore train", lambda: run_from_args(args), RESUME_HINT)

if __name__ == "__main__":
    sys.exit(main())
