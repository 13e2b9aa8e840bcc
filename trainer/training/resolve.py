"""The defaults a run takes from its store, and the line that says what they resolved to.

    TrainConfig (as given: None / () where a default applies)
        ──resolve(cfg, store)──▶ TrainConfig with every default filled in: --tokens (one pass
                                  over the store's training rows), the sparsity knob, jumprelu's
                                  threshold and bandwidth, the log and checkpoint intervals
        ──summary(given, run, rows)──▶ train's first line, naming each default it took
"""

from __future__ import annotations

from actstore.loader import holdout
from actstore.store.activation_store import ActivationStore
from trainer.training.config import KNOB, TrainConfig
from trainer.training.defaults import JUMP, MAX_DEFAULT_TOKENS


def training_rows(store: ActivationStore, part: holdout.Partition) -> int:
    """Rows of the shards a run trains on (every shard but the held-out ones)."""
    return sum(b - a for a, b in map(store.layout.shard_rows_range, part.train))


def resolve(cfg: TrainConfig, store: ActivationStore) -> tuple[TrainConfig, int]:
    """`cfg` with its defaults filled in against `store`, and the store's training rows."""
    rows = training_rows(store, holdout.partition(store, cfg.holdout))
    return cfg.resolved(rows), rows


def summary(given: TrainConfig, run: TrainConfig, rows: int) -> str:
    """One line: the run's length, and every setting it took by default (as `actstore
    generate` says where it runs and why)."""
    taken = []
    if given.batch_size == TrainConfig.batch_size:
        taken.append(f"--batch-size {run.batch_size}")
    if given.tokens is None:
        cap = f", at most {MAX_DEFAULT_TOKENS:,}" if rows > MAX_DEFAULT_TOKENS else ""
        taken.append(f"--tokens {run.run_tokens:,} (one pass over the {rows:,} training "
                     f"rows{cap})")
    knob = KNOB[run.arch]
    if not getattr(given, knob):
        taken.append(f"--{knob} {' '.join(f'{v:g}' for v in run.sparsity)}")
    taken += [f"--{name.replace('_', '-')} {getattr(run, name):g}" for name in JUMP
              if getattr(given, name) is None and getattr(run, name) is not None]
    taken += [f"--{name.replace('_', '-')} {getattr(run, name)}"
              for name in ("log_every", "checkpoint_every") if getattr(given, name) is None]
    return (f"train: {run.steps} steps of {run.batch_size} rows = {run.run_tokens:,} tokens; "
            f"defaults: {', '.join(taken) or 'none'}")
