"""The ensemble (trainer.training.ensemble): members equal training each alone."""

from __future__ import annotations

import pytest
import torch

from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary

D, N, B = 4, 6, 5


def test_ensemble_members_equal_training_each_alone() -> None:
    from trainer.training.ensemble import Ensemble, adam, train_step

    configs = [DictionaryConfig(arch="relu", d_model=D, latents=N, l1=c) for c in (0.01, 0.1)]
    configs.append(DictionaryConfig(arch="topk", d_model=D, latents=N, k=2))
    batches = [torch.randn(B, D, dtype=torch.float64) for _ in range(4)]
    ensemble = Ensemble(configs, adam(1e-2), seed=3).to("cpu", torch.float64)
    for x in batches:
        ensemble.step(x)
    for i, cfg in enumerate(configs):
        alone = SparseDictionary(cfg, torch.Generator().manual_seed(3 + i)).double()
        opt = adam(1e-2)(alone)  # the same optimiser as the ensemble members
        for x in batches:
            train_step(alone, alone, opt, x, grad_clip=1.0)
        for (name, a), b in zip(alone.state_dict().items(),
                                ensemble.members[i].state_dict().values(), strict=True):
            assert torch.equal(a, b), (i, name)
    with pytest.raises(ValueError, match="share d_model"):
        Ensemble([configs[0], DictionaryConfig(arch="relu", d_model=5, latents=3)], adam())
