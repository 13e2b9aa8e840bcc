"""What a run takes when a flag is not given, beyond the schedule (`config.default_lr` and
the rest): each architecture's sparsity and learning-rate multiple, chosen by
benchmarks/defaults_sweep.py (trainer/README.md, "Default sparsity"); --tokens' default; the
log and checkpoint intervals, one derived from the other. Plain values and functions: the
config (`TrainConfig.resolved`) applies them.
"""

from __future__ import annotations

#: Each architecture's sparsity when its knob is not given: k = 32 (the quickstart's larger k)
#: for the architectures that choose their codes by rank, and the L1 and L0 coefficients whose
#: L0 is of that order within the quickstart's run (benchmarks/defaults_sweep.py; the table in
#: trainer/README.md).
DEFAULT_SPARSITY: dict[str, tuple[float, ...]] = {"relu": (2.0,), "jumprelu": (0.3,),
                                                  "topk": (32,), "batchtopk": (32,),
                                                  "matryoshka": (32,)}
#: `default_lr`'s multiple per architecture (benchmarks/defaults_sweep.py): relu and jumprelu
#: become sparse by moving biases and thresholds, which Adam moves about one learning rate a
#: step, so at TopK's rate relu ends the quickstart's 64 steps dense or, sparse, with twice
#: TopK's error, and jumprelu's thresholds barely leave their start; at 4x both are sparse.
LR_SCALE: dict[str, float] = {"relu": 4.0, "jumprelu": 4.0, "topk": 1.0, "batchtopk": 1.0,
                              "matryoshka": 1.0}
#: jumprelu's own settings (None: DictionaryConfig's defaults).
JUMP = ("jump_init_threshold", "jump_bandwidth")
#: --tokens' default is one pass over the training rows, capped here: ~2 minutes of a
#: 24k-latent TopK on one H100 (DESIGN.md, 0.83 M tokens/s); longer runs are asked for.
MAX_DEFAULT_TOKENS = 100_000_000
#: Default steps between metric lines, and the least steps between checkpoints.
LOG_EVERY, CHECKPOINT_EVERY = 50, 500


def default_tokens(train_rows: int, batch_size: int) -> int:
    """--tokens' default: one pass over the store's training rows in whole batches (one epoch
    of the loader), at most `MAX_DEFAULT_TOKENS`."""
    return min(train_rows, MAX_DEFAULT_TOKENS) // batch_size * batch_size


def default_intervals(log_every: int | None, checkpoint_every: int | None) -> tuple[int, int]:
    """(log_every, checkpoint_every): 50 and 500, or, when one is given, the other derived
    from it so that checkpoints fall on logging steps (the smallest multiple of log_every
    that is at least 500; the largest divisor of checkpoint_every up to 50)."""
    if log_every is None:
        log_every = (LOG_EVERY if checkpoint_every is None else
                     max(d for d in range(1, LOG_EVERY + 1) if checkpoint_every % d == 0))
    if checkpoint_every is None:
        checkpoint_every = -(-CHECKPOINT_EVERY // log_every) * log_every
    return log_every, checkpoint_every
