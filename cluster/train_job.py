"""`actstore train` on a Ray cluster through Ray Train's `TorchTrainer`: the same training code
as under torchrun, one worker per GPU (or N CPU workers with gloo).

    ray job submit --address http://HEAD:8265 -- python -m cluster.train_job --workers 8 \\
        --gpu --store s3://bucket/stores/KEY --hook transformer.h.6 --arch topk \\
        --latents 24576 --k 32 --tokens 200000000 --batch-size 4096 --out /shared/run1

Ray Train builds the process group (NCCL with --gpu, else gloo) and sets RANK / LOCAL_RANK /
WORLD_SIZE in each worker; `trainer.training.train.train` joins that group. `--out` must be a
path all workers' nodes see (rank 0 writes it; every rank reads the checkpoint on --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from trainer.cli import add_arguments, config_from_args, print_plan
from trainer.training.config import TrainConfig


def _worker(config: dict[str, Any]) -> None:
    from trainer.training.train import train

    train(TrainConfig.from_dict(config))


#: Ray Train's limit on its workers' start (each imports torch and joins the process group):
#: its default, 60 s, is passed on a saturated machine, and the job then fails or restarts. A
#: Ray started by this process inherits the value; a cluster started apart takes it from the
#: job's environment (`ray job submit --runtime-env-json '{"env_vars": {...}}'`).
START_TIMEOUT = ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")


def run(cfg: TrainConfig, workers: int, gpu: bool, storage: str | None = None) -> None:
    """Fit `cfg` on `workers` Ray Train workers (blocks until done; raises on failure)."""
    os.environ.setdefault(*START_TIMEOUT)  # before Ray starts: its processes inherit it
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker, train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=RunConfig(storage_path=storage or tempfile.mkdtemp(prefix="actstore-ray-")))
    trainer.fit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.train_job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (ranks)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
    parser.add_argument("--ray-storage", help="Ray Train's run folder (default: a temp dir)")
    args = vars(parser.parse_args(argv))
    workers, gpu, storage = args.pop("workers"), args.pop("gpu"), args.pop("ray_storage")
    plan = args.pop("plan", None)
    try:
        cfg = config_from_args(args)
        if plan:  # what each worker's device needs, with dp = workers / tp
            os.environ["WORLD_SIZE"] = str(workers)
            return print_plan(cfg)
    except ValueError as e:
        print(f"cluster.train_job: error: {e}", file=sys.stderr)
        return 2
    run(cfg, workers, gpu, storage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
