"""Loading: shuffled, resumable, rank-split batches from a store (the trainer's only view of
it), and the held-out slice.

    store ──▶ loader.EpochPlan: seeded chunk order ──▶ this rank's rows ──▶ windows of
              `shuffle_buffer` rows, each permuted ──▶ read-ahead threads decode chunk runs
          ──▶ loader.Loader: Batch(x={hook: (B, d)}, ...), state_dict()
    delivery.py: a batch's stored bits as values on its device, normalised (Normalizer)
    buffers.py: window buffers reused across windows and epochs (BufferPool)
    holdout.py: the train / held-out partition by whole shards, the held-out rows
    shuffle_quality.py: how well a window mixes contexts (bench and tests)
    ground_truth.py: the feature directions a toy store was made from (for MMCS)

Public names (what `actstore.loader` has always exported): `Batch`, `EpochPlan`, `Loader`,
`LoaderConfig`, `Normalizer`, `STATE_VERSION`, `selected_chunks`, `selected_rows`.
"""

from actstore.loader.delivery import Normalizer
from actstore.loader.loader import (
    STATE_VERSION,
    Batch,
    EpochPlan,
    Loader,
    LoaderConfig,
    selected_chunks,
    selected_rows,
)

__all__ = [
    "STATE_VERSION",
    "Batch",
    "EpochPlan",
    "Loader",
    "LoaderConfig",
    "Normalizer",
    "selected_chunks",
    "selected_rows",
]
