"""How mixed are the batches? Compared with a perfect global shuffle of the same store.

The measure: the fraction of row pairs inside a batch that come from the same context. Rows of
one context are strongly correlated, so this is what a poor shuffle inflates. For a perfect
global shuffle (batches drawn uniformly without replacement from all N rows) its expectation is
sum_c n_c (n_c - 1) / (N (N - 1)), with n_c the rows of context c.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch

from actstore.store.activation_store import ActivationStore


class ShuffleQuality(NamedTuple):
    """Same-context pair fractions of a stream of batches."""

    observed: float
    """Fraction of in-batch row pairs that share a context, over all batches."""
    perfect: float
    """Its expectation under a perfect global shuffle."""

    @property
    def ratio(self) -> float:
        """observed / perfect: 1 is a perfect shuffle, larger is worse."""
        return self.observed / self.perfect if self.perfect else float("inf")


def shuffle_quality(store: ActivationStore, batches: Iterable[torch.Tensor]) -> ShuffleQuality:
    """Measure batches given as tensors of store row numbers (a Loader's `Batch.rows`)."""
    context = store.read_index(0, store.num_rows).context
    same = pairs = 0
    for rows in batches:
        _, counts = np.unique(context[rows.numpy()], return_counts=True)
        same += int((counts * (counts - 1)).sum() // 2)
        pairs += len(rows) * (len(rows) - 1) // 2
    _, sizes = np.unique(context, return_counts=True)
    n = store.num_rows
    perfect = float((sizes * (sizes - 1)).sum()) / (n * (n - 1))
    return ShuffleQuality(same / pairs if pairs else 0.0, perfect)
