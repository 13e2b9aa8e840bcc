"""The sparse training step for dictionaries whose codes are selected by rank (TopK,
BatchTopK): latents chosen block by block without a (batch, latents) tensor (`select`), and
gradients through the selected entries only (`sampled`).

    xc (B, d), W_enc (d, n) ──▶ selection.select: one tile of latent columns at a time
        (BLOCK_ELEMENTS) fed to RowTopK (topk, AuxK), BatchTopK (training) or Above
        (batchtopk's inference threshold) ──▶ Selection(rows, cols, values), sorted by row
      ──▶ sampled.selected: the chosen pre-activations, differentiable (embedding_bag backward)
      ──▶ sampled.decode: each row's Σ code · W_dec[latent] (embedding_bag); to_sparse: the
          codes as a sparse (B, n) tensor
    jumprelu.py: JumpReLU's straight-through estimators (its dense step)
    dense.py: the dense step's top-k codes (per row, per batch) and firing counts

Public names: `Above`, `Accumulator`, `BatchTopK`, `RowTopK`, `Selection`, `decode`,
`from_sorted`, `select`, `selected`, `to_sparse`.
"""

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
