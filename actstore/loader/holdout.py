"""A held-out slice of a store: whole contexts that training never reads.

Shards are consecutive row ranges of the corpus in context order (rows are shuffled only
inside a shard), so the last shards hold the last contexts. Training reads the first shards
(`LoaderConfig.shards`); evaluation reads the last ones, minus the rows of the one context that
straddles the boundary (its other rows were trained on):

    shards   0 1 2 ... S-h-1 | S-h ... S-1
             training         held out (h = ceil(fraction * S))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from actstore.store.activation_store import ActivationStore


@dataclass(frozen=True)
class Partition:
    """Which shards train and which are held out."""

    train: tuple[int, ...]
    """Shards the trainer reads."""
    held_out: tuple[int, ...]
    """Shards kept for evaluation (the last ones)."""

    @property
    def train_shards(self) -> tuple[int, ...] | None:
        """`LoaderConfig.shards` for training: None (every shard) when nothing is held out."""
        return self.train if self.held_out else None


def partition(store: ActivationStore, fraction: float) -> Partition:
    """Hold out the last ceil(fraction · shards) shards (none when fraction is 0)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout must be a fraction in [0, 1), got {fraction}")
    shards = store.num_shards
    held = math.ceil(fraction * shards) if fraction else 0
    if held and held >= shards:
        raise ValueError(
            f"store {store.url} has {shards} shard(s): holding out {fraction:.0%} would leave "
            "none to train on; regenerate it with smaller shards (actstore generate "
            "--shard-mib) or train without --holdout")
    return Partition(tuple(range(shards - held)), tuple(range(shards - held, shards)))


def first_held_out_context(store: ActivationStore, s: Partition) -> int:
    """Smallest context id none of whose rows is in a training shard (0 when nothing is held
    out, or nothing trains)."""
    if not s.train or not s.held_out:
        return 0
    last = store.layout.shard_rows_range(s.train[-1])
    return int(store.read_index(*last).context.max()) + 1


def held_out_contexts(store: ActivationStore, n: int, first: int = 0) -> torch.Tensor:
    """The last `n` full-length contexts of the store whose id is >= `first` (the held-out
    slice's first context, `first_held_out_context`), (n, context_length) token ids."""
    table = store.read_contexts(["context_id", "tokens"])
    ids = table.column("context_id").to_pylist()
    tokens = table.column("tokens").to_pylist()
    full = [t for i, t in zip(ids, tokens, strict=True)
            if i >= first and len(t) == store.spec.context_length][-n:]
    if not full:
        raise ValueError(f"store {store.url} has no full-length context to evaluate on"
                         + (f" from context {first} on (the held-out slice)" if first else ""))
    return torch.tensor(full, dtype=torch.long)


@dataclass(frozen=True)
class HeldOutRows:
    """Held-out rows read in store order: activations and where each row came from."""

    x: torch.Tensor
    """(rows, d_model) float32 activations, raw (not normalised)."""
    rows: torch.Tensor
    """Store row number of each row, int64."""


def held_out_batches(store: ActivationStore, hook: str, s: Partition, max_rows: int,
                     batch_rows: int = 1 << 14) -> Iterator[HeldOutRows]:
    """Up to `max_rows` rows of whole held-out contexts, in batches. Rows inside a shard were
    shuffled at write time, so the first rows of a shard are a random sample of its contexts."""
    if not s.held_out:
        raise ValueError("nothing is held out: the run trained on every shard (train with "
                         "--holdout, e.g. 0.1)")
    first = first_held_out_context(store, s)
    left = max_rows
    for shard in s.held_out:
        a, b = store.layout.shard_rows_range(shard)
        for lo in range(a, b, batch_rows):
            if left <= 0:
                return
            hi = min(lo + batch_rows, b)
            keep = np.flatnonzero(store.read_index(lo, hi).context >= first)[:left]
            if len(keep):
                x = torch.from_numpy(store.read_float32(hook, lo, hi)[keep])
                yield HeldOutRows(x, torch.from_numpy(keep + lo))
                left -= len(keep)


def training_sample(store: ActivationStore, hook: str, s: Partition, max_rows: int,
                    block: int = 1 << 14, *, rank: int = 0, world: int = 1
                    ) -> Iterator[torch.Tensor]:
    """Up to `max_rows` rows of the training shards as float32 batches, in blocks spread
    evenly over them (baselines are fitted on what the dictionaries saw, never on the
    held-out slice); rank r of `world` gets every world-th block from the r-th, so the
    ranks together read the sample once."""
    blocks = [(lo, min(lo + block, b)) for a, b in map(store.layout.shard_rows_range, s.train)
              for lo in range(a, b, block)]
    wanted = min(len(blocks), -(-max_rows // block))
    picks = np.unique(np.linspace(0, len(blocks) - 1, wanted).round().astype(int))
    left = max_rows
    for n, i in enumerate(picks):
        lo, hi = blocks[i]
        hi = min(hi, lo + left)
        if n % world == rank:
            yield torch.from_numpy(store.read_float32(hook, lo, hi))
        left -= hi - lo
        if left <= 0:
            return
