"""Loss recovered in `actstore eval`: the store's model run over held-out contexts with the
hooked output replaced by each dictionary's reconstruction, and by each baseline's (PCA, ICA,
neurons, random) top-k reconstruction at the dictionaries' k, so the seed paper's comparison
at equal L0 extends from FVU to what the model does with the reconstruction.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from actstore.loader import holdout
from actstore.loader.delivery import Normalizer
from actstore.loader.ground_truth import TOY_MODEL
from actstore.model.hooks import Replace
from actstore.store.activation_store import ActivationStore
from trainer.dictionary.dictionaries import SparseDictionary
from trainer.evaluation import baselines
from trainer.evaluation.splicer import Splicer
from trainer.parallel import distributed

if TYPE_CHECKING:
    from trainer.evaluation.config import EvalConfig, Member



def splice_scores(cfg: EvalConfig, store: ActivationStore, part: holdout.Partition,
                  members: list[Member], bases: list[baselines.Basis], *,
                  device: torch.device, ks: dict[str, int],
                  extra: Sequence[tuple[str, int, Replace]] = ()
                  ) -> tuple[list[dict[str, Any]], str]:
    """The rows `{"method", "k", "recovered", ...}` (computed on rank 0, sent to the others)
    and what was done, or why nothing was: the scores without it still stand. `ks`: each
    dictionary's k (its L0, rounded, when it has none), where the baselines are spliced;
    `extra`: other (method, k, raw replacement) to splice in as well."""
    if store.spec.model == TOY_MODEL:
        return [], "skipped (a toy store has no model)"
    if not cfg.splice_contexts:
        return [], "skipped (--splice-contexts 0)"
    rows: list[dict[str, Any]] = []
    why = ""
    if distributed.rank() == 0:
        first = holdout.first_held_out_context(store, part) if part.held_out else 0
        raw = Normalizer(None, 1.0)
        hook, target = members[0].source["hook"], members[0].source.get("target_hook")
        try:  # a transcoder's target is replaced, computed from its input in the same pass
            splicer = Splicer(store, target or hook, raw, cfg.splice_contexts, device,
                              first_context=first, source=(hook, raw) if target else None)
        except Exception as e:
            why = f"skipped: the model {store.spec.model} failed to load ({e})"
            print(f"actstore eval: warning: loss recovered {why}", file=sys.stderr)
        else:
            rows = _rows(splicer, members, bases, device, ks, extra=extra)
            why = f"{len(splicer.ids)} held-out contexts"
    out: tuple[list[dict[str, Any]], str] = distributed.broadcast_object((rows, why))
    return out


def _dictionary(sae: SparseDictionary, norm: Normalizer, out: Normalizer) -> Replace:
    """Raw in, raw out: `h` is the hook's activations (a transcoder's: its input hook's)."""
    def fn(h: torch.Tensor) -> torch.Tensor:
        return out.invert(sae.reconstruct(norm.apply(h.float()))[0])
    return fn


def _baseline(basis: baselines.Basis, k: int) -> Replace:
    def fn(h: torch.Tensor) -> torch.Tensor:
        return baselines.top_k_reconstruct(basis, h, k)
    return fn


def _rows(splicer: Splicer, members: list[Member], bases: list[baselines.Basis],
          device: torch.device, ks: dict[str, int], *,
          extra: Sequence[tuple[str, int, Replace]] = ()) -> list[dict[str, Any]]:
    methods = [(m.name, ks[m.name]) for m in members] + [(n, k) for n, k, _ in extra]
    fns = [_dictionary(m.sae.to(device), m.norm, m.out_norm) for m in members]
    fns += [fn for _, _, fn in extra]
    for b in bases:
        on = b.to(device)
        widths = sorted({min(k, b.encoder.shape[1]) for k in ks.values()})
        methods += [(b.name, k) for k in widths]
        fns += [_baseline(on, k) for k in widths]
    out = []
    for (name, k), metrics in zip(methods, splicer.evaluate_replacements(fns), strict=True):
        recovered = metrics.get("loss_recovered", metrics.get("final_state_recovered"))
        out.append({"method": name, "k": k, "recovered": recovered, **metrics})
    return out
