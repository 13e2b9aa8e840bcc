"""Loss recovered: the model run with a dictionary's reconstruction spliced in at the hook.

For a causal LM (the store's model class has an LM head):

    recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)
    kl        = mean over predicted tokens of KL(p_clean || p_spliced)

where zero means the hook's output replaced by zeros. A model without an LM head (MiniLM, a
sentence encoder) gets the same ratio on its final hidden state: 1 - MSE_spliced / MSE_zero,
each against the clean final state. Positions the store does not hold (a dropped BOS) keep
their clean value. The reconstruction acts on raw activations: normalise, encode, decode,
denormalise. A cross-layer transcoder replaces every target hook at once (its replacement
model): each target computed, in the same pass, from the inputs recorded at its layer and the
layers before it (as the replaced model computes them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from actstore.loader.delivery import Normalizer
from actstore.loader.holdout import held_out_contexts
from actstore.model.capture import load_model
from actstore.model.hooks import Replace, recording, replaced_at
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.clt import CrossLayerTranscoder
from trainer.dictionary.dictionaries import SparseDictionary

#: Output elements (logits or final states) one evaluation chunk holds: 64 MB in float32, so
#: a held-out slice of a 50k-vocabulary LM never holds (contexts, length, vocab) at once.
CHUNK_ELEMENTS = 1 << 24

LayerReplace = Callable[[int, list[torch.Tensor]], torch.Tensor]
"""The replacement of target hook j from the activations it depends on: the source hooks'
of layers 0 … j (a transcoder's or CLT's inputs) or the target's own, `[h]`."""


class Splicer:
    """The store's model on one device, ready to evaluate dictionaries on held-out contexts.
    The contexts go through in chunks of `CHUNK_ELEMENTS` outputs; the clean outputs are
    recomputed per chunk rather than kept, so memory stays bounded by a chunk."""

    def __init__(self, store: ActivationStore, hook: str, norm: Normalizer, contexts: int,
                 device: torch.device, *, first_context: int = 0,
                 source: tuple[str, Normalizer] | None = None,
                 layers: Sequence[tuple[str, Normalizer, tuple[str, Normalizer]]] = ()
                 ) -> None:
        """`hook`'s activations are replaced, `norm` is how the dictionaries' reconstructions
        were normalised; `source`: a transcoder's input hook and its normaliser, from which
        the replacement of `hook` is computed in the same pass; `layers`: a CLT's later
        (target hook, its normaliser, (input hook, its normaliser)), replaced too."""
        spec = store.spec
        self.model = load_model(spec.model, spec.model_revision, torch.float32, device)
        self.hook, self.source = hook, source
        self.targets = [(hook, norm), *((t, n) for t, n, _ in layers)]
        self.sources = ([source, *(src for _, _, src in layers)] if source is not None
                        else [])
        self.ids = held_out_contexts(store, contexts, first_context).to(device)
        self.norm, self.skip_first = norm, spec.bos_policy == "drop"
        with torch.inference_mode():
            first = self._run(None, self.ids[:1])
            self.is_lm = self._is_lm
            per_context = first.shape[1] * first.shape[2]
            self.chunks = torch.split(self.ids, max(1, CHUNK_ELEMENTS // per_context))
            zero: dict[str, float] = {}
            for ids in self.chunks:  # the zero-ablation baseline, summed over chunks
                _add(zero, self._compare(self._reference(ids),
                                         self._run(_layered(torch.zeros_like), ids, own=True), ids))
            self.zero = zero

    def _run(self, replace: LayerReplace | None, ids: torch.Tensor, own: bool = False
             ) -> torch.Tensor:
        """Logits (LM) or final hidden states, float32, of the contexts `ids`, with each
        target hook's activations replaced by `replace` of themselves, or of the source
        hooks' unless `own`."""
        if replace is None:
            out = self.model(input_ids=ids)
        else:
            with contextlib.ExitStack() as stack:
                seen = ([stack.enter_context(recording(self.model, h)) for h, _ in self.sources]
                        if self.sources and not own else None)
                for j, (hook, _) in enumerate(self.targets):
                    stack.enter_context(replaced_at(self.model, hook,
                                                    self._replacer(replace, j, seen)))
                out = self.model(input_ids=ids)
        logits = getattr(out, "logits", None)
        self._is_lm = logits is not None
        result: torch.Tensor = logits if logits is not None else out.last_hidden_state
        return result.float()

    def _replacer(self, fn: LayerReplace, j: int, seen: list[list[torch.Tensor]] | None
                  ) -> Replace:
        """Target j's replacement from its inputs so far; positions the store does not hold
        keep their value."""
        def keep_skipped(h: torch.Tensor) -> torch.Tensor:
            if seen is not None and not all(seen[: j + 1]):
                raise ValueError(f"hook {self.targets[j][0]} ran before the input hooks of its "
                                 "layer and the ones before it: give a CLT's hooks in the "
                                 "order the model runs them")
            new = fn(j, [h] if seen is None else [s[-1] for s in seen[: j + 1]]).to(h.dtype)
            if self.skip_first:
                new[:, 0] = h[:, 0]
            return new
        return keep_skipped

    def _reference(self, ids: torch.Tensor) -> torch.Tensor:
        """The clean run of the contexts `ids`, as `_compare` takes it: the log-probabilities
        of the predicted positions (LM), or the final states (encoders)."""
        clean = self._run(None, ids)
        return F.log_softmax(clean[:, :-1].flatten(0, 1), -1) if self.is_lm else clean

    def _compare(self, reference: torch.Tensor, other: torch.Tensor,
                 ids: torch.Tensor) -> dict[str, float]:
        """Sums over this chunk's predicted tokens (LM) or positions (encoders): the clean and
        the other run's CE and KL(clean || other), or the other's final-state squared error."""
        if not self.is_lm:
            return {"se": float((other - reference).pow(2).sum(-1).double().sum()),
                    "n": float(reference[..., 0].numel())}
        target = ids[:, 1:].flatten()
        log_p, log_q = reference, F.log_softmax(other[:, :-1].flatten(0, 1), -1)

        def total(per_token: torch.Tensor) -> float:
            return float(per_token.double().sum())  # summed in float64 across chunks
        return {"ce_clean": total(F.nll_loss(log_p, target, reduction="none")),
                "ce": total(F.nll_loss(log_q, target, reduction="none")),
                "kl": total((log_p.exp() * (log_p - log_q)).sum(-1)), "n": float(len(target))}

    @torch.inference_mode()
    def evaluate(self, saes: Sequence[SparseDictionary]) -> list[dict[str, float]]:
        """Per dictionary: CE clean/zero/spliced, KL and the fraction recovered (LM), or the
        final-state MSE fraction recovered (encoders)."""
        fired = [torch.zeros_like(s.tokens_since_fired, dtype=torch.bool) for s in saes]

        def reconstruct(sae: SparseDictionary, seen: torch.Tensor) -> Replace:
            into = self.norm if self.source is None else self.source[1]

            def fn(h: torch.Tensor) -> torch.Tensor:  # h: the source's, for a transcoder
                x_hat, fired = sae.reconstruct(into.apply(h.float()))
                seen.logical_or_(fired)  # in place: the caller keeps `seen`
                return self.norm.invert(x_hat)
            return fn
        results = self.evaluate_layers(
            [self._clt_replacement(sae, seen) if isinstance(sae, CrossLayerTranscoder)
             else _layered(reconstruct(sae, seen)) for sae, seen in zip(saes, fired, strict=True)])
        for sae, metrics, seen in zip(saes, results, fired, strict=True):
            # latents that fire on none of the held-out tokens: dead where it counts
            metrics["silent_held_out"] = float(sae.over_slices((~seen).sum()))
        return results

    def _clt_replacement(self, clt: CrossLayerTranscoder, seen: torch.Tensor) -> LayerReplace:
        """A CLT's replacement model: target j from layers 0 … j's latents, each layer encoded
        once per pass (at its own target, the first that needs it)."""
        parts: list[torch.Tensor] = []

        def fn(j: int, xs: list[torch.Tensor]) -> torch.Tensor:
            if j == 0:
                parts.clear()  # a new pass
            for i in range(len(parts), j + 1):
                x = self.sources[i][1].apply(xs[i].flatten(0, -2).float())
                part, sel = clt.layer_outputs(i, x)
                parts.append(part)
                seen[sel.cols, i] = True
            y = torch.stack([parts[i][:, j - i] for i in range(j + 1)]).sum(0) + clt.b_dec[j]
            return self.targets[j][1].invert(y).view(*xs[j].shape[:-1], -1)
        return fn

    @torch.inference_mode()
    def evaluate_replacements(self, replacements: Sequence[Replace]) -> list[dict[str, float]]:
        """The metrics of `evaluate` for any reconstructions of the hooked output (raw
        activations in, raw out): a dictionary's, or a baseline's top-k."""
        return self.evaluate_layers([_layered(r) for r in replacements])

    @torch.inference_mode()
    def evaluate_layers(self, replacements: Sequence[LayerReplace]) -> list[dict[str, float]]:
        """`evaluate_replacements` for replacements of every target hook at once."""
        sums: list[dict[str, float]] = [{} for _ in replacements]
        for ids in self.chunks:
            reference = self._reference(ids)  # once per chunk, for every replacement
            for fn, total in zip(replacements, sums, strict=True):
                _add(total, self._compare(reference, self._run(fn, ids), ids))
        return [self._lm_metrics(t) if self.is_lm else self._state_metrics(t) for t in sums]

    def _lm_metrics(self, spliced: dict[str, float]) -> dict[str, float]:
        n = spliced["n"]
        clean, zero, ours = spliced["ce_clean"] / n, self.zero["ce"] / n, spliced["ce"] / n
        return {"ce_clean": clean, "ce_zero": zero, "ce_spliced": ours, "kl": spliced["kl"] / n,
                "loss_recovered": (zero - ours) / (zero - clean) if zero != clean else 1.0}

    def _state_metrics(self, spliced: dict[str, float]) -> dict[str, float]:
        ours, zero = spliced["se"] / spliced["n"], self.zero["se"] / self.zero["n"]
        return {"final_mse_spliced": ours, "final_mse_zero": zero,
                "final_state_recovered": 1 - ours / zero if zero else 1.0}


def _layered(replace: Replace) -> LayerReplace:
    """One hook's replacement as a replacement of target 0 from its (one) input."""
    return lambda _j, xs: replace(xs[-1])


def _add(total: dict[str, float], part: dict[str, float]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v
