"""Dictionaries as after training, for the export tests: every parameter moved away from its
initial value by seeded noise, so a fold or a transpose gone wrong shows."""

from __future__ import annotations

from typing import Any

import torch

from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary


def trained_like(arch: str, *, d: int = 12, n: int = 40, seed: int = 1, noise_seed: int = 2,
                 d_out: int | None = None, skip: bool = False,
                 decoder_noise: float = 0.0) -> SparseDictionary:
    """An SAE, or with `d_out` a transcoder (`skip`: with a skip), initialised from `seed`
    and perturbed with noise from `noise_seed` (`decoder_noise`: the decoder too)."""
    shape: dict[str, Any] = ({"kind": "transcoder", "d_out": d_out, "skip": skip}
                             if d_out is not None else {})
    cfg = DictionaryConfig(arch=arch, d_model=d, latents=n, k=5, l1=0.1, l0=0.1,  # type: ignore[arg-type]
                           **shape)
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(noise_seed)
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(sae.W_enc.shape, generator=g) * 0.2)
        if decoder_noise:
            sae.W_dec.add_(torch.randn(sae.W_dec.shape, generator=g) * decoder_noise)
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.2)
        sae.b_dec.copy_(torch.randn(cfg.out_width, generator=g))
        sae.threshold.fill_(0.15)
        if skip:
            sae.W_skip.copy_(torch.randn(d, cfg.out_width, generator=g) * 0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.log(torch.rand(n, generator=g) * 0.3 + 0.01))
    return sae
