"""`actstore eval`'s settings (`EvalConfig`) and what it scores (`Member`: one dictionary of
a run), below every module of the evaluation so that none needs another for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from actstore.loader.delivery import Normalizer
from trainer.dictionary.dictionaries import SparseDictionary
from trainer.tracking.config import TrackingConfig


@dataclass(frozen=True)
class EvalConfig(TrackingConfig):
    """`actstore eval --run DIR --out REPORT`, or `--dictionary PATH … --store URL --hook H`;
    with `--log`, the scores go to the run's trackers too (`TrackingConfig`'s fields)."""

    out: str
    """Report folder: eval.json, latents.json, report.md, frontier.png, index.html and the
    browser's latents/ folder."""
    run: str | None = None
    """Training run folder (the `--out` of actstore train: it holds dictionaries/<name>/;
    default: none, the --dictionary dictionaries alone)."""
    dictionary: tuple[str, ...] = ()
    """A dictionary's folder, ours or saved by SAELens (cfg.json + sae_weights.safetensors:
    standard, topk, jumprelu, batchtopk; Gemma Scope and Llama Scope as SAELens saves them) or
    sparsify (cfg.json + sae.safetensors, topk): scored beside the run's dictionaries, on the
    same rows against the same baselines; repeat the flag for several."""
    store: str | None = None
    """Store URL (default: the one the run trained on; it must have the same key); required
    for --dictionary without --run."""
    hook: str | None = None
    """The store's hook the --dictionary dictionaries read (default: the run's hook, else the
    store's only hook)."""
    holdout: float = 0.1
    """Without --run: the last fraction of the store's shards is scored and the others fit the
    baselines (dictionaries from elsewhere never saw the store: every row is new to them)."""
    any_hook: bool = False
    """Score a --dictionary whose files name another hook than --hook anyway (the report
    names both)."""
    rows: int = 1 << 16
    """Held-out rows scored (FVU, L0, firing, top activations)."""
    fit_rows: int = 1 << 20
    """Training rows PCA's covariance is streamed from (all of them when fewer)."""
    ica: Literal["logcosh", "cube", "none"] = "logcosh"
    """FastICA's non-linearity (none: no ICA baseline)."""
    ica_rows: int | None = None
    """Training rows FastICA is fitted on, whitened by the streamed covariance (by default
    65,536 on cpu, about a minute for 200 iterations on 2 cores; 1,048,576 on cuda)."""
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    """L0 values at which each baseline keeps its top-k codes (each dictionary's k is added)."""
    top: int = 16
    """Top activations kept per latent."""
    show: int = 64
    """Latents per dictionary whose pages go into latents.json as plain JSON (a seeded sample
    of those that fired; index.html's browser shows every latent)."""
    window: int = 12
    """Tokens shown either side of an activating token."""
    quantile_examples: int = 12
    """Firings per latent kept at random (uniformly, in the same pass as the top ones) and
    shown in the browser cut into --quantiles activation bands (0: none)."""
    quantiles: int = 4
    """Activation quantile bands of a latent's random firings in the browser."""
    logit_tokens: int = 10
    """Tokens the browser lists as each latent promotes and suppresses: its decoder direction
    through the final norm's weight and the unembedding of the store's causal LM, when its
    weights are on disk (0: skip)."""
    splice_contexts: int = 16
    """Held-out contexts run through the store's model with each dictionary's reconstruction,
    and each baseline's at the dictionaries' L0s, spliced in at the hook: loss recovered
    (0: skip; a model that cannot be loaded is skipped with a warning)."""
    on_training_rows: bool = False
    """Score a run that held nothing out (no --holdout) on its last shard anyway; the report
    says the rows were trained on."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the dictionaries and baselines run."""
    seed: int = 0
    """Seeds the random basis, ICA's start and the sample of latents shown."""

    def __post_init__(self) -> None:
        super().__post_init__()  # --log's comma lists
        if min(self.rows, self.fit_rows, self.ica_rows or 1, self.top, self.window,
               self.quantiles) < 1 or min(self.show, self.splice_contexts,
                                          self.quantile_examples, self.logit_tokens) < 0:
            raise ValueError("--rows, --fit-rows, --ica-rows, --top, --window, --quantiles must "
                             "be >= 1 and --show, --splice-contexts, --quantile-examples, "
                             "--logit-tokens >= 0")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("--ks must be one or more values >= 1")
        if self.run is None and not self.dictionary:
            raise ValueError("give --run (a training run's folder) or --dictionary PATH")
        if self.run is None and self.store is None:
            raise ValueError("--dictionary without --run needs --store URL (and --hook when "
                             "the store has several)")
        if not 0 < self.holdout < 1:
            raise ValueError(f"--holdout must be a fraction in (0, 1), got {self.holdout}")

    @property
    def run_dir(self) -> str:
        """The run folder (for what only a run of our own has)."""
        if self.run is None:
            raise ValueError("this needs a training run: pass --run")
        return self.run


@dataclass(frozen=True)
class Member:
    """One dictionary of the run."""

    name: str
    sae: SparseDictionary
    norm: Normalizer
    source: dict[str, Any]
    """cfg.json's `source`: store, hook, model, train_config (a transcoder's target_hook)."""
    target_norm: Normalizer | None = None
    """How a transcoder's target was normalised (None: an SAE, whose target is its input)."""

    @property
    def out_norm(self) -> Normalizer:
        """The normaliser of what the dictionary reconstructs."""
        return self.target_norm or self.norm
