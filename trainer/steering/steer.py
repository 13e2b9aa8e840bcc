"""Steering with a dictionary direction (the seed paper's activation patching, as activation
addition): while a causal LM generates, `scale` times latent i's decoder direction is added to
the hooked module's output at every position.

The direction is in raw activation units: the dictionary decodes normalised activations,
x' = (x - mean) · s, so latent i firing at a contributes a · W_dec[i] / s to the raw
activation. `direction` returns W_dec[i] / s; adding `scale` times it is what latent i firing
at activation `scale` would add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers
from torch import nn

from actstore.model.capture import load_model, model_path
from actstore.model.device import resolve_device
from actstore.model.hooks import added
from trainer.dictionary.export import load_dictionary


@dataclass(frozen=True)
class SteerConfig:
    """`actstore steer --dictionary DIR --latent I --scale A --prompt TEXT`."""

    dictionary: str
    """A trained dictionary's folder (dictionaries/<name>/ of a run)."""
    latent: int
    """The latent whose decoder direction is added."""
    scale: float
    """How much of it: the activation latent I would have (raw units; negative subtracts)."""
    prompt: str
    """Text the model continues."""
    max_new_tokens: int = 32
    """Tokens generated after the prompt."""
    model: str | None = None
    """Model to steer (default: the one whose activations the dictionary was trained on)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs."""
    sample: bool = False
    """Sample instead of greedy decoding (seeded, the same seed for both continuations)."""
    seed: int = 0
    """Seed of sampling."""

    def __post_init__(self) -> None:
        if self.latent < 0 or self.max_new_tokens < 1:
            raise ValueError("--latent must be >= 0 and --max-new-tokens >= 1")


@dataclass(frozen=True)
class Direction:
    """A latent's decoder direction in raw activation units, and where it applies."""

    vector: torch.Tensor
    """(d_model,) float32."""
    hook: str
    """Module whose output it is added to."""
    model: str
    """Model the dictionary was trained on."""
    revision: str | None
    """That model's revision."""


def direction(folder: str, latent: int) -> Direction:
    """Latent `latent`'s decoder row of the dictionary in `folder`, in raw units."""
    sae, norm, cfg = load_dictionary(folder)
    if not 0 <= latent < sae.cfg.latents:
        raise ValueError(f"--latent {latent} is not in {folder} (it has {sae.cfg.latents} "
                         "latents)")
    source = cfg["source"]
    vector = sae.W_dec.detach()[latent].float() / norm.scale
    return Direction(vector, source["hook"], source["model"], source.get("model_revision"))


def continue_text(model: nn.Module, tokenizer: Any, cfg: SteerConfig,
             steer: Direction | None) -> str:
    """The continuation of the prompt, steered by `scale · steer` (None: unsteered)."""
    device = next(model.parameters()).device
    ids = tokenizer(cfg.prompt, return_tensors="pt").input_ids.to(device)
    torch.manual_seed(cfg.seed)
    options = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.sample,
               "use_cache": True, "pad_token_id": tokenizer.pad_token_id
               or tokenizer.eos_token_id}
    with torch.inference_mode():
        if steer is None:
            out = model.generate(ids, **options)  # type: ignore[operator]
        else:
            with added(model, steer.hook, cfg.scale * steer.vector.to(device)):
                out = model.generate(ids, **options)  # type: ignore[operator]
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def steer(cfg: SteerConfig) -> tuple[str, str]:
    """(unsteered, steered) continuations of the prompt."""
    d = direction(cfg.dictionary, cfg.latent)
    name = cfg.model or d.model
    want = resolve_device(cfg.device)
    model = load_model(name, d.revision, torch.float32, want)
    if not hasattr(model, "generate") or not model.can_generate():  # type: ignore[operator]
        raise ValueError(f"{name} is not a causal LM ({type(model).__name__}): steering needs "
                         "a model that generates text")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path(name))
    return continue_text(model, tokenizer, cfg, None), continue_text(model, tokenizer, cfg, d)
