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

from actstore.shell.flags import Command, Flag, add_fields, run_command
from trainer.training.config import TrainConfig

#: The flags in --help's order: what a run needs, its sweep, its numbers, its choices, switches.
_ORDER = ("store", "hook", "kind", "target_hook", "arch", "latents", "k", "l1", "l0",
          "jump_init_threshold", "jump_bandwidth", "tokens",
          "batch_size", "lr", "warmup_steps", "decay_start", "grad_clip", "seed", "init_rows",
          "aux_coef", "dead_after_tokens", "log_every", "checkpoint_every", "eval_every",
          "eval_contexts", "shuffle_buffer", "read_threads", "tp", "holdout", "out", "normalize",
          "bias_init", "init_from", "kernel", "device", "widths", "prefix_weight", "log",
          "wandb_project", "wandb_entity", "wandb_name", "skip", "resume", "overwrite",
          "autocast", "progress", "plots")
#: The fields whose several values are a sweep (one dictionary per combination).
_SWEEPS = ("latents", "k", "l1", "l0")
_SWEEP = Flag(extra="; several values: a sweep, one dictionary each")
_SWITCHES = {"autocast": Flag(help="no bf16 autocast on cuda (train in float32)"),
             "progress": Flag(help="no progress bar"),
             "plots": Flag(help="no PNG plots at the end")}


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train sparse dictionaries on a store (DDP under torchrun)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(t)


def add_arguments(t: argparse.ArgumentParser) -> None:
    """Every flag defaults to None: only flags given on the command line override the file
    (the defaults shown are TrainConfig's)."""
    t.add_argument("--config", help="JSON or TOML file of these settings, by field name "
                   "(flags given as well override it)")
    add_fields(t, TrainConfig, only=_ORDER, overlay=True,
               required="required: a flag or in --config",
               overrides={**dict.fromkeys(_SWEEPS, _SWEEP), **_SWITCHES,
                          "store": Flag(repeat=True)})
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

    from actstore.loader.paired import open_stores
    from actstore.store.format import storage_numpy_dtype
    from trainer.parallel.distributed import World, wants_cuda
    from trainer.parallel.mesh import data_parallel
    from trainer.training.memory import describe, scale_bytes_of
    from trainer.training.resolve import resolve
    from trainer.training.train import check_against, widths

    store = open_stores(cfg.store)
    device = torch.device("cuda" if wants_cuda(cfg.device) else "cpu")
    # launched (torchrun, Ray): this world; run by hand: a world of --tp ranks (dp = 1)
    world = World(0, int(os.environ.get("WORLD_SIZE", str(cfg.tp))), device, owns_group=False)
    check_against(cfg, store, world)  # the run's own checks: hook, store complete, batch, tp
    cfg = resolve(cfg, store)[0]  # --tokens' default (the dead window) needs the store
    d_model, d_out, sites = widths(cfg, store)
    print(describe(cfg, d_model, storage_numpy_dtype(store.spec.dtype).itemsize,
                   data_parallel(world.size, cfg.tp), device, d_out=d_out,
                   sites=sites, scale_bytes=scale_bytes_of(store.spec.dtype)))
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
COMMAND = Command("train", add_train_parser, run_from_args, RESUME_HINT, config=TrainConfig)
"""`actstore train` (registered as an `actstore.commands` entry point)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m trainer.cli` (what torchrun launches)."""
    parser = argparse.ArgumentParser(prog="actstore train", description=__doc__)
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    return run_command("actstore train", lambda: run_from_args(args), RESUME_HINT)

if __name__ == "__main__":
    sys.exit(main())
