"""A dictionary's configuration: architecture, shape, sparsity settings, and which training
step (dense or sparse) it takes. Checked on construction, so a bad combination never reaches a
module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from trainer.dictionary.matryoshka import PREFIX_WEIGHT, check_widths, default_widths

__all__ = ["BATCH", "ENCODER_SEED", "RECONSTRUCTS", "SELECTED", "Arch", "DictionaryConfig",
           "Kernel", "Kind", "resolve_kernel"]

Arch = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka"]
Kind = Literal["sae", "transcoder", "clt", "crosscoder"]
Kernel = Literal["auto", "dense", "sparse"]
#: Architectures whose codes are chosen by rank, so the sparse step applies (see kernels/).
SELECTED = ("topk", "batchtopk", "matryoshka")
#: Architectures whose codes are the batch's top k · B (and an inference threshold).
BATCH = ("batchtopk", "matryoshka")
#: Kinds that reconstruct their own input (a crosscoder's: its sites side by side), so the
#: encoder reads it centred by b_dec and starts as the decoder's transpose.
RECONSTRUCTS = ("sae", "crosscoder")
#: Mixed into a transcoder's seed for its encoder's initial directions (its decoder's are the
#: seed's own, as an SAE's).
ENCODER_SEED = 0x5DEECE66D


def resolve_kernel(arch: Arch, kernel: Kernel) -> Literal["dense", "sparse"]:
    """The step a dictionary trains with: sparse for topk/batchtopk unless asked otherwise.
    ReLU and JumpReLU keep the dense step: which of their codes are non-zero is known only
    after the full (batch, latents) pre-activations exist, so the encoder cannot skip them,
    and their early-training codes are far from sparse (L0 in the hundreds or thousands)."""
    if kernel == "sparse" and arch not in SELECTED:
        raise ValueError(f"--kernel sparse applies to {' and '.join(SELECTED)}; --arch {arch} "
                         "trains with the dense step")
    if kernel == "auto":
        return "sparse" if arch in SELECTED else "dense"
    return kernel


@dataclass(frozen=True)
class DictionaryConfig:
    """One dictionary's shape and sparsity settings."""

    arch: Arch
    """relu (L1 penalty), topk, batchtopk, jumprelu (L0 penalty) or matryoshka."""
    d_model: int
    """Width of the activations."""
    latents: int
    """Number of dictionary features."""
    k: int | None = None
    """Active latents per token (topk; batchtopk: on average)."""
    l1: float = 0.0
    """L1 coefficient on the codes (relu)."""
    l0: float = 0.0
    """L0 coefficient (jumprelu)."""
    aux_k: int | None = None
    """Dead latents used by AuxK (topk, batchtopk); default 2 * k, capped at the dead count."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_after_tokens: int = 10_000_000
    """A latent silent for this many tokens is dead (AuxK, and the dead-latent metric)."""
    jump_bandwidth: float = 0.05
    """Width of the straight-through estimator's kernel (jumprelu; was 0.001)."""
    jump_init_threshold: float = 1.0
    """Initial threshold of every latent (jumprelu; was 0.001: dense in short runs)."""
    threshold_momentum: float = 0.1
    """Update rate of batchtopk's inference threshold (was 0.01: the smallest kept activation
    falls all through training, and an average over ~100 steps lagged far behind it)."""
    kind: Kind = "sae"
    """sae: reconstruct the input; transcoder: predict another hook's activations from it;
    clt: a cross-layer transcoder over `layers` layers (clt.CrossLayerTranscoder); crosscoder:
    an SAE over `sites` activation sites side by side (crosscoder.py), d_model their sum."""
    d_out: int | None = None
    """Width of a transcoder's target (default: d_model)."""
    skip: bool = False
    """A transcoder's learned linear skip from input to target (a skip transcoder)."""
    layers: int = 1
    """A cross-layer transcoder's layers (its input and target hooks); 1 for the others."""
    widths: tuple[int, ...] = ()
    """Matryoshka's nested prefixes, increasing, the last = latents (default: latents / 4
    and all, `matryoshka.default_widths`)."""
    prefix_weight: float = PREFIX_WEIGHT
    """Weight of each inner prefix's squared error in Matryoshka's loss, the full
    reconstruction's being 1 (1: SAELens' sum; default `matryoshka.PREFIX_WEIGHT`)."""
    sites: tuple[int, ...] = ()
    """A crosscoder's site widths in the order of its input's blocks (summing to d_model);
    empty for the other kinds."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.latents < 1 or (self.d_out is not None and self.d_out < 1):
            raise ValueError("d_model, d_out and latents must be >= 1")
        if self.kind == "sae" and (self.d_out is not None or self.skip):
            raise ValueError("d_out and skip are a transcoder's (kind='transcoder')")
        if (self.layers < 2) if self.kind == "clt" else (self.layers != 1):
            raise ValueError(f"a cross-layer transcoder has layers >= 2, any other dictionary "
                             f"1; got {self.layers} for kind {self.kind!r}")
        if self.kind == "clt" and (self.skip or self.arch == "matryoshka"):
            raise ValueError("skip applies to a transcoder (kind='transcoder') and matryoshka to "
                             "an SAE or a transcoder, not to a CLT")
        object.__setattr__(self, "sites", tuple(self.sites))  # cfg.json holds a list
        if (self.kind == "crosscoder") != bool(self.sites) or (self.sites and (
                len(self.sites) < 2 or min(self.sites) < 1 or sum(self.sites) != self.d_model
                or self.d_out is not None or self.skip)):
            raise ValueError(f"a crosscoder has sites (>= 2 widths summing to d_model, no d_out "
                             f"or skip), any other dictionary none; got {self.sites} for kind "
                             f"{self.kind!r}, d_model {self.d_model}")
        if self.arch == "matryoshka":
            object.__setattr__(self, "widths", check_widths(self.widths or default_widths(
                self.latents), self.latents))
        elif self.widths:
            raise ValueError("--widths are Matryoshka's (--arch matryoshka)")
        else:
            object.__setattr__(self, "widths", ())  # cfg.json holds a list
        if self.prefix_weight < 0:
            raise ValueError(f"--prefix-weight must be >= 0, got {self.prefix_weight}")
        if self.arch in SELECTED and (self.k is None
                                                   or not 1 <= self.k <= self.latents):
            raise ValueError(f"--k must be in [1, latents={self.latents}] for {self.arch}, "
                                 f"got {self.k}")
        if self.arch == "relu" and self.l1 < 0:
            raise ValueError("l1 must be >= 0")
        if self.arch == "jumprelu" and (self.l0 < 0 or self.jump_bandwidth <= 0):
            raise ValueError("l0 must be >= 0 and jump_bandwidth > 0")

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> DictionaryConfig:
        """A config as a dictionary's files record it; one saved before `prefix_weight`
        existed summed its prefixes' losses (weight 1), whatever today's default."""
        return cls(**{**({"prefix_weight": 1.0} if d.get("arch") == "matryoshka" else {}),
                      **d})

    @property
    def out_width(self) -> int:
        """Width of what the dictionary reconstructs (the target's)."""
        return self.d_out or self.d_model
