"""The tokens each latent promotes and suppresses, for the browser: its decoder direction
through the direct path to the logits of the store's causal LM.

    decoder row d (raw units: un-normalised) ──▶ final norm's elementwise part (LayerNorm:
    centred, times its weight; RMSNorm: times its weight) ──▶ unembedding W_U ──▶ logits
    ──▶ the `k` largest (promoted) and smallest (suppressed) tokens

The direct path ignores every layer after the hook, and the norm's division by the residual's
scale (one positive factor per token, which changes no ranking). Models that are not causal
LMs, whose weights are not on disk, or whose residual width differs from the hook's get none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import transformers
from torch import nn

from actstore.loader.ground_truth import TOY_MODEL
from actstore.model.capture import model_path, skeleton
from actstore.store.activation_store import ActivationStore
from trainer.evaluation.config import Member

#: Latents put through the unembedding at once.
_BATCH = 4096


class TokenEffects(NamedTuple):
    """Per latent, the token ids its direction raises and lowers most, and by how much."""

    up_ids: torch.Tensor
    """(latents, k) int64 token ids, largest logit first."""
    up_values: torch.Tensor
    """(latents, k) float32 logits of a unit of the latent."""
    down_ids: torch.Tensor
    """(latents, k) int64 token ids, most negative first."""
    down_values: torch.Tensor
    """(latents, k) float32."""


def _final_norm(model: nn.Module) -> nn.Module | None:
    """The base model's last child that is a norm (GPT-2's ln_f, Llama's norm, Pythia's
    final_layer_norm), or None."""
    base = getattr(model, "base_model", model)
    norms = [m for m in base.children() if "norm" in type(m).__name__.lower()]
    return norms[-1] if norms else None


def _is_causal_lm(config: object) -> bool:
    name = type(skeleton(config)).__name__
    return name.endswith(("ForCausalLM", "LMHeadModel"))


def unembedding(store: ActivationStore, d: int) -> tuple[torch.Tensor, str] | str:
    """(the direct path's matrix (d, vocab): norm weight folded into W_U, LayerNorm's centring
    applied, what was done) or why there is none."""
    spec = store.spec
    if spec.model == TOY_MODEL:
        return "skipped (a toy store has no model)"
    try:
        path = model_path(spec.model)
        config = transformers.AutoConfig.from_pretrained(path, revision=spec.model_revision,
                                                         local_files_only=True)
        if not _is_causal_lm(config):
            return f"skipped ({spec.model} is not a causal LM)"
        cls: Any = type(skeleton(config))
        model = cls.from_pretrained(
            path, revision=spec.model_revision, dtype=torch.float32, local_files_only=True)
    except Exception as e:  # no weights on disk, an unknown architecture: the rest stands
        return f"skipped (the weights of {spec.model} did not load: {type(e).__name__})"
    head = model.get_output_embeddings()
    if head is None or head.weight.shape[1] != d:
        return f"skipped ({spec.model}'s unembedding does not read the hook's width {d})"
    w_u = head.weight.detach().float().T.clone()  # (d, vocab)
    norm = _final_norm(model)
    centre = isinstance(norm, nn.LayerNorm)
    weight = getattr(norm, "weight", None)
    what = "decoder direction"
    # logits = ((v − mean v) ⊙ weight) · W_U = v · C diag(weight) W_U, C the centring
    if isinstance(weight, torch.Tensor) and weight.shape == (d,):
        w_u *= weight.detach().float().unsqueeze(1)
        what += f" × {type(norm).__name__}'s weight"
    if centre:  # LayerNorm subtracts the mean of the features: the direction's too
        w_u -= w_u.mean(0, keepdim=True)
        what = what.replace("decoder direction", "decoder direction centred (LayerNorm)")
    return w_u, f"{what} × unembedding of {spec.model} (direct path: later layers ignored)"


def token_effects(members: list[Member], store: ActivationStore, k: int
                  ) -> tuple[dict[str, TokenEffects], str]:
    """Per dictionary, its latents' promoted and suppressed tokens, and what was done (or why
    nothing was)."""
    if k == 0:
        return {}, "skipped (--logit-tokens 0)"
    d = int(members[0].sae.W_dec.shape[-1])
    found = unembedding(store, d)
    if isinstance(found, str):
        return {}, found
    w_u, what = found
    k = min(k, w_u.shape[1])
    out = {}
    with torch.no_grad():
        for m in members:
            w_dec = m.sae.W_dec.detach().float().cpu()
            if w_dec.dim() != 2 or w_dec.shape[1] != d:
                continue
            parts: list[list[torch.Tensor]] = [[], [], [], []]
            for lo in range(0, len(w_dec), _BATCH):
                # a unit of the latent moves the raw activation by d / scale
                logits = (w_dec[lo:lo + _BATCH] / m.out_norm.scale) @ w_u
                up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
                for part, t in zip(parts, (up.indices, up.values, down.indices, down.values),
                                   strict=True):
                    part.append(t)
            out[m.name] = TokenEffects(*(torch.cat(p) for p in parts))
    return out, what
