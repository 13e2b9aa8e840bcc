"""The sparse training step for dictionaries whose codes are selected by rank (TopK,
BatchTopK): latents chosen block by block without a (batch, latents) tensor (`select`), and
gradients through the selected entries only (`sampled`)."""

from trainer.dictionary.kernels.sampled import decode, selected, to_sparse
from trainer.dictionary.kernels.selection import (
                                    Above,
                                    Accumulator,
                                    BatchTopK,
                                    RowTopK,
                                    Selection,
                                    from_sorted,
                                    select,
)

__all__ = ["Above", "Accumulator", "BatchTopK", "RowTopK", "Selection", "decode", "from_sorted",
           "select", "selected", "to_sparse"]
