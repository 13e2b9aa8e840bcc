"""Loss recovered: the model run with a dictionary's reconstruction spliced in at the hook.

For a causal LM (the store's model class has an LM head):

    recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)
    kl        = mean over predicted tokens of KL(p_clean || p_spliced)

where zero means the hook's output replaced by zeros. A model without an LM head (MiniLM, a
sentence encoder) gets the same ratio on its final hidden state: 1 - MSE_spliced / MSE_zero,
each against the clean final state. Positions the store does not hold (a dropped BOS) keep
their clean value. The reconstruction acts on raw activations: normalise, encode, decode,
denormalise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actstore.capture import load_model
from actstore.loader import Normalizer
from actstore.store import ActivationStore
from trainer.dictionaries import SparseDictionary

Replace = Callable[[torch.Tensor], torch.Tensor]


def held_out_contexts(store: ActivationStore, n: int) -> torch.Tensor:
    """The last `n` full-length contexts of the store, (n, context_length) token ids."""
    tokens = store.read_contexts(["tokens"]).column("tokens").to_pylist()
    full = [t for t in tokens if len(t) == store.spec.context_length][-n:]
    if not full:
        raise ValueError(f"store {store.url} has no full-length context to evaluate on")
    return torch.tensor(full, dtype=torch.long)


@contextmanager
def _patched(module: nn.Module, replace: Replace) -> Iterator[None]:
    def hook(_m: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple | list):
            return type(output)([replace(output[0]), *output[1:]])
        return replace(output)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class Splicer:
    """The store's model on one device, ready to evaluate dictionaries on held-out contexts."""

    def __init__(self, store: ActivationStore, hook: str, norm: Normalizer, contexts: int,
                 device: torch.device) -> None:
        spec = store.spec
        self.model = load_model(spec.model, spec.model_revision, torch.float32, device)
        self.module = dict(self.model.named_modules())[hook]
        self.ids = held_out_contexts(store, contexts).to(device)
        self.norm, self.skip_first = norm, spec.bos_policy == "drop"
        self.is_lm = False  # set by the clean run: does the model return logits?
        with torch.inference_mode():
            self.clean = self._run(None)
            self.zero = self._run(torch.zeros_like)

    def _run(self, replace: Replace | None) -> torch.Tensor:
        """Logits (LM) or final hidden states, float32."""
        if replace is None:
            out = self.model(input_ids=self.ids)
        else:
            def keep_skipped(h: torch.Tensor) -> torch.Tensor:
                new = replace(h).to(h.dtype)
                if self.skip_first:
                    new[:, 0] = h[:, 0]
                return new
            with _patched(self.module, keep_skipped):
                out = self.model(input_ids=self.ids)
        logits = getattr(out, "logits", None)
        self.is_lm = logits is not None
        result: torch.Tensor = logits if logits is not None else out.last_hidden_state
        return result.float()

    @torch.inference_mode()
    def evaluate(self, saes: Sequence[SparseDictionary]) -> list[dict[str, float]]:
        """Per dictionary: CE clean/zero/spliced, KL and the fraction recovered (LM), or the
        final-state MSE fraction recovered (encoders)."""
        results = []
        for sae in saes:
            fired = torch.zeros(sae.cfg.latents, dtype=torch.bool, device=self.ids.device)

            def reconstruct(h: torch.Tensor, sae: SparseDictionary = sae,
                            fired: torch.Tensor = fired) -> torch.Tensor:
                z = sae.encode(self.norm.apply(h.float()))
                fired |= (z > 0).flatten(0, -2).any(0)
                return self.norm.invert(sae.decode(z))
            spliced = self._run(reconstruct)
            metrics = self._lm_metrics(spliced) if self.is_lm else self._state_metrics(spliced)
            # latents that fire on none of the held-out tokens: dead where it counts
            metrics["silent_held_out"] = float((~fired).sum())
            results.append(metrics)
        return results

    def _lm_metrics(self, spliced: torch.Tensor) -> dict[str, float]:
        target = self.ids[:, 1:].flatten()

        def ce(logits: torch.Tensor) -> float:
            return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), target))
        clean, zero, ours = ce(self.clean), ce(self.zero), ce(spliced)
        log_p = F.log_softmax(self.clean[:, :-1], -1)
        log_q = F.log_softmax(spliced[:, :-1], -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        return {"ce_clean": clean, "ce_zero": zero, "ce_spliced": ours, "kl": kl,
                "loss_recovered": (zero - ours) / (zero - clean) if zero != clean else 1.0}

    def _state_metrics(self, spliced: torch.Tensor) -> dict[str, float]:
        ours = float((spliced - self.clean).pow(2).sum(-1).mean())
        zero = float((self.zero - self.clean).pow(2).sum(-1).mean())
        return {"final_mse_spliced": ours, "final_mse_zero": zero,
                "final_state_recovered": 1 - ours / zero if zero else 1.0}
