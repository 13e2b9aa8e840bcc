"""What `--log tensorboard,wandb` costs a training run: the same run (a TopK dictionary on a toy
store, the default `--log-every`) without trackers, with TensorBoard, with W&B (offline) and with
both, in one process, alternating the order over rounds; tokens/s of each and its ratio to the
run without trackers (median over rounds).

    python -m benchmarks.trackers_overhead [--rounds 3] [--tokens 1228800]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from actstore.generate.toy import HOOK, ToyConfig, make_toy_store
from trainer.training.config import TrainConfig
from trainer.training.train import train

SETUPS: dict[str, tuple[str, ...]] = {"none": (), "tensorboard": ("tensorboard",),
                                      "wandb": ("wandb",), "both": ("tensorboard", "wandb")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=300 * 4096, help="300 steps of 4096 rows")
    a = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        store = make_toy_store(ToyConfig(out=f"{tmp}/stores", d=128, features=1024, active=8,
                                         rows=1 << 20))
        rates: dict[str, list[float]] = {name: [] for name in SETUPS}
        for r in range(a.rounds):
            order = list(SETUPS) if r % 2 == 0 else list(reversed(SETUPS))
            for name in order:
                result = train(TrainConfig(
                    store=store.url, hook=(HOOK,), arch="topk", latents=(2048,), k=(32,),
                    tokens=a.tokens, batch_size=4096, out=str(Path(tmp) / f"{name}-{r}"),
                    log=SETUPS[name], eval_contexts=0, progress=False, plots=False))
                rates[name].append(result.tokens_this_run / result.seconds)
    base = statistics.median(rates["none"])
    print(f"TopK n=2048 k=32 on a d=128 toy store, {a.tokens} tokens, log every 50 steps, "
          f"median of {a.rounds} rounds:")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"  {name:<12} {rate:>10,.0f} tokens/s   ratio to none {rate / base:.4f}")


if __name__ == "__main__":
    main()
