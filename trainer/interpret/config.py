"""`actstore interpret`'s settings (`InterpretConfig`), below every module of the package so
that none needs another for them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Baseline = Literal["pca", "ica", "neurons", "random", "none"]


@dataclass(frozen=True)
class InterpretConfig:
    """`actstore interpret --run DIR --llm PATH_OR_NAME --latents N --out REPORT`."""

    run: str
    """Training run folder that `actstore eval` has scored (it holds dictionaries/<name>/)."""
    llm: str
    """The explainer and scorer: a model name served at --endpoint, else a local
    transformers causal LM (a folder) run in this process."""
    out: str
    """Folder for interpret.json, interpret.md, scores.svg and the response cache (by default
    also the eval report whose index.html gets the explanations)."""
    report: str | None = None
    """The eval report folder (`actstore eval --out`; default: --out)."""
    delphi_export: str | None = None
    """Also write the sampled latents' activations on the held-out contexts to this folder in
    EleutherAI delphi's cache layout (a folder per method), for delphi's own pipeline; with
    --max-requests 0 nothing is asked of the model."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM,
    llama.cpp's server, `transformers serve`, a hosted API); POSTs to /chat/completions."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's API key (sent as a Bearer token when set)."""
    latents: int = 50
    """Latents sampled per method (each dictionary, and the PCA, ICA, neuron and random
    baselines' directions), among those that fire in enough held-out contexts."""
    baselines: tuple[Baseline, ...] = ("pca", "ica", "neurons", "random")
    """Baselines whose directions are interpreted too (none: --baselines none)."""
    window: int = 16
    """Tokens in one context shown to the explainer or a scorer (the held-out contexts are cut
    into windows of this length)."""
    explain_examples: int = 10
    """Top-activating windows the explainer reads (activating tokens marked)."""
    score_examples: int = 10
    """Held-out activating windows scored per latent (spread over the activation quantiles),
    and as many windows where it is zero; the explainer saw none of their contexts."""
    quantiles: int = 5
    """Activation quantiles the scored activating windows are drawn from, evenly."""
    batch: int = 5
    """Windows per detection or fuzzing request."""
    simulate_examples: int = 6
    """Windows whose per-token activations the simulator predicts (half activating), when
    the backend returns token log-probs."""
    max_tokens: int = 60
    """Most tokens the model may generate for an explanation or a detection/fuzzing answer
    (a simulation gets two per token of its window)."""
    concurrency: int = 8
    """Requests in flight at once (an in-process model answers one at a time)."""
    max_requests: int | None = None
    """Budget: most requests sent to the model in this invocation (cached answers are free);
    what is left is said, and a rerun continues from the cache (default: no limit)."""
    timeout: float = 120.0
    """Seconds one HTTP request may take before it counts as a transient failure."""
    retry_deadline: float = 600.0
    """Seconds a request keeps being retried after transient failures (timeouts, 5xx, 429,
    refused connections) before the endpoint is taken to have failed for good."""
    backoff: float = 1.0
    """First wait before a retry, in seconds; doubled each time (with jitter, capped at 30 s,
    at least what a 429's Retry-After asks)."""
    baseline_k: int | None = None
    """Codes a baseline keeps per token (each token's largest in magnitude; a direction is
    active where its kept code is positive). Default: the median L0 of the run's
    dictionaries, so baselines are interpreted at the dictionaries' sparsity."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where a local --llm runs."""
    seed: int = 0
    """Seeds the sample of latents, of scored windows and their order in each prompt."""

    def __post_init__(self) -> None:
        if min(self.latents, self.window, self.explain_examples, self.score_examples,
               self.quantiles, self.batch, self.max_tokens, self.concurrency) < 1:
            raise ValueError("--latents, --window, --explain-examples, --score-examples, "
                             "--quantiles, --batch, --max-tokens and --concurrency must be >= 1")
        if self.simulate_examples < 0 or (self.max_requests is not None
                                          and self.max_requests < 0):
            raise ValueError("--simulate-examples and --max-requests must be >= 0")
        if min(self.timeout, self.retry_deadline) <= 0 or self.backoff < 0:
            raise ValueError("--timeout and --retry-deadline must be > 0, --backoff >= 0")
        if self.baseline_k is not None and self.baseline_k < 1:
            raise ValueError("--baseline-k must be >= 1")

    @property
    def report_dir(self) -> str:
        """The eval report read (and whose index.html is rewritten)."""
        return self.report or self.out

    @property
    def chosen_baselines(self) -> tuple[str, ...]:
        return tuple(b for b in self.baselines if b != "none")
