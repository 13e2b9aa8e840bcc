"""`actstore interpret`: explain and score sampled latents of every method.

    corpus.load_corpus ──▶ windows + each method's sampled latents and activations
    plans.plan_method  ──▶ per latent: the explainer's windows, the scored ones (disjoint)
    phase 1: every explanation request            ─┐ client.Client: cache, budget,
    phase 2: every detection / fuzzing / simulation ┘  bounded concurrency, retries
    ──▶ per latent: explanation, scores, malformed answers; per method: their distributions
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.evaluation.examples import render
from trainer.evaluation.report.writer import decoder_of
from trainer.interpret import prompts
from trainer.interpret.client import Client
from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import Corpus, Method, Windows, load_corpus, page_stats
from trainer.interpret.llm import Backend, EndpointError, HttpBackend, Reply, Request
from trainer.interpret.plans import LatentPlan, plan_method
from trainer.interpret.scores import balanced_accuracy, pearson, summarize

TASKS = ("detection", "fuzzing", "simulation")


@dataclass(frozen=True)
class Interpretation:
    """What interpret.json holds."""

    meta: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    """Per method: latents sampled and eligible, score summaries, malformed and unsent counts."""
    latents: dict[str, dict[str, dict[str, Any]]]
    """Per method, per latent id: explanation, scores, what was asked and answered."""
    pages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per method, per latent id: a latent page of eval's report (firing, histogram, the
    explainer's windows as examples), for the ones eval's sample lacks."""


class Texts:
    """Window texts, each token's piece decoded once."""

    def __init__(self, decode: Callable[[Sequence[int]], str], windows: Windows) -> None:
        self.decode, self.windows = decode, windows
        self._pieces: dict[int, list[str]] = {}

    def pieces(self, w: int) -> list[str]:
        if w not in self._pieces:
            ids = self.windows.tokens[self.windows.rows(w)].tolist()
            self._pieces[w] = prompts.pieces_of(self.decode, ids)
        return self._pieces[w]

    def marked(self, w: int, marks: Sequence[int] = ()) -> str:
        return prompts.marked(self.pieces(w), marks)


@dataclass
class Job:
    """One latent's requests and answers."""

    method: Method
    column: int
    plan: LatentPlan
    result: dict[str, Any] = field(default_factory=dict)
    pending: list[tuple[str, Request, Any]] = field(default_factory=list)
    """(task, request, what scores its answer)."""

    def acts(self, w: int, windows: Windows) -> np.ndarray:
        return self.method.acts[windows.rows(w), self.column]


def make_backend(cfg: InterpretConfig) -> Backend:
    if cfg.endpoint:
        return HttpBackend(cfg.endpoint, cfg.llm, key_env=cfg.api_key_env, timeout=cfg.timeout,
                           deadline=cfg.retry_deadline, backoff=cfg.backoff,
                           concurrency=cfg.concurrency)
    from actstore.model.device import resolve_device
    from trainer.interpret.local import LocalBackend

    return LocalBackend(cfg.llm, resolve_device(cfg.device))


def explain_requests(jobs: list[Job], texts: Texts, cfg: InterpretConfig) -> list[Request]:
    out = []
    for job in jobs:
        shown = [texts.marked(w, np.flatnonzero(job.acts(w, texts.windows) > 0).tolist())
                 for w in job.plan.explain]
        job.result["examples"] = [
            {"context": int(texts.windows.context[w]), "value": float(job.acts(w, texts.windows)
                                                                      .max()), "text": t}
            for w, t in zip(job.plan.explain, shown, strict=True)]
        out.append(prompts.explain(shown, cfg.max_tokens))
    return out


def score_requests(job: Job, texts: Texts, cfg: InterpretConfig, logprobs: bool) -> None:
    """Queue the detection, fuzzing and simulation requests of a latent with an explanation."""
    e, plan, b = job.result["explanation"], job.plan, cfg.batch
    for i in range(0, len(plan.detection), b):
        part = plan.detection[i:i + b]
        job.pending.append(("detection", prompts.detect(
            e, [texts.marked(w) for w, _ in part], cfg.max_tokens), [y for _, y in part]))
    for i in range(0, len(plan.fuzzing), b):
        fz = plan.fuzzing[i:i + b]
        job.pending.append(("fuzzing", prompts.fuzz(
            e, [texts.marked(f.window, f.marks) for f in fz], cfg.max_tokens),
            [f.label for f in fz]))
    if logprobs:
        for w in plan.simulation:
            job.pending.append(("simulation", prompts.simulate(e, texts.pieces(w)),
                                job.acts(w, texts.windows)))


def tally(job: Job, replies: Sequence[Reply | None]) -> None:
    """The latent's scores from its answers; malformed and unsent answers counted."""
    r = job.result
    labels: dict[str, tuple[list[int], list[int]]] = {"detection": ([], []),
                                                      "fuzzing": ([], [])}
    sim_pred: list[float] = []
    sim_true: list[float] = []
    for (task, _, truth), reply in zip(job.pending, replies, strict=True):
        r["asked"][task] += 1
        if reply is None:
            r["unsent"] += 1
            continue
        if task == "simulation":
            if reply.logprobs is None:
                r["no_logprobs"] += 1
                continue
            predicted = prompts.parse_simulation(reply, len(truth))
            if predicted is not None:
                sim_pred += predicted
                sim_true += truth.tolist()
            ok = predicted is not None
        else:
            said = prompts.parse_labels(reply, len(truth))
            if said is not None:
                labels[task][0].extend(truth)
                labels[task][1].extend(said)
            ok = said is not None
        if not ok:
            r["malformed"][task] += 1
        else:
            r["answered"][task] += 1
    for task, (y, p) in labels.items():
        r[task] = balanced_accuracy(y, p) if y else None
    r["simulation"] = pearson(sim_pred, sim_true) if sim_true else None


def interpret(cfg: InterpretConfig, backend: Backend | None = None,
              progress: bool = True) -> tuple[Interpretation, Client]:
    """Explain and score `cfg.latents` latents of every method (see the module's docstring)."""
    corpus = load_corpus(cfg)
    if cfg.delphi_export:
        from trainer.interpret.exports.delphi import write_delphi_cache

        write_delphi_cache(corpus, Path(cfg.delphi_export))
    backend = backend or make_backend(cfg)
    client = Client(backend, Path(cfg.out) / "cache" / "responses.jsonl", cfg.max_requests,
                    progress)
    decode = decoder_of(corpus.store)  # a tokenizer load: once, for prompts and pages
    texts = Texts(decode, corpus.windows)
    jobs = [Job(m, j, plan) for m in corpus.methods
            for j, plan in enumerate(plan_method(m.acts, m.latents, corpus.windows, cfg,
                                                 m.name))]
    try:
        replies = client.ask_all(explain_requests(jobs, texts, cfg), "explanations")
        logprobs = _logprobs(client)
        for job, reply in zip(jobs, replies, strict=True):
            r = job.result
            r |= {"explanation": None if reply is None else prompts.parse_explanation(reply),
                  "asked": dict.fromkeys(TASKS, 0), "answered": dict.fromkeys(TASKS, 0),
                  "malformed": dict.fromkeys(("explanation", *TASKS), 0),
                  "unsent": int(reply is None), "no_logprobs": 0}
            r["malformed"]["explanation"] = int(reply is not None and r["explanation"] is None)
            if r["explanation"] is not None:
                score_requests(job, texts, cfg, logprobs)
        asked = [p[1] for job in jobs for p in job.pending]
        answers = iter(client.ask_all(asked, "scoring"))
        for job in jobs:
            tally(job, [next(answers) for _ in job.pending])
    finally:
        client.close()
    found = assemble(cfg, corpus.meta, corpus.methods, jobs, client=client, logprobs=logprobs)
    pages = browser_pages(corpus, jobs, cfg.window, decode)
    return dataclasses.replace(found, pages=pages), client


def browser_pages(corpus: Corpus, jobs: list[Job], window: int,
                  decode: Callable[[Sequence[int]], str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Eval-style pages of the interpreted latents: each explained window's top token as an
    example (rendered like eval's, `window` tokens either side, in one call per method)."""
    w = corpus.windows
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in corpus.methods:
        mine = [j for j in jobs if j.method is method]
        picks = [[int(w.starts[x]) + int(np.argmax(j.acts(x, w))) for x in j.plan.explain]
                 for j in mine]
        flat = [r for p in picks for r in p]
        shown = iter(render(corpus.store, [int(w.store_rows[r]) for r in flat],
                            [float(method.acts[r, j.column]) for j, p in zip(mine, picks,
                                                                            strict=True)
                             for r in p], decode, window))
        stats = page_stats(method)
        out[method.name] = {str(j.plan.latent): stats[j.column] | {
            "examples": [dataclasses.asdict(next(shown)) for _ in p]}
            for j, p in zip(mine, picks, strict=True)}
    return out


def _logprobs(client: Client) -> bool:
    """Whether the backend returns log-probs (asked once; the answer is cached like any)."""
    probe = Request("Reply with one digit.", "5", 2, logprobs=True)
    try:
        reply, = client.ask_all([probe], "log-probs probe")
    except EndpointError as e:  # some servers refuse the logprobs fields outright
        print(f"no simulation: the backend refused a request for log-probs ({e})",
              file=sys.stderr)
        return False
    return reply is not None and reply.logprobs is not None


def assemble(cfg: InterpretConfig, meta: dict[str, Any], corpus_methods: list[Method],
             jobs: list[Job], *, client: Client, logprobs: bool) -> Interpretation:
    """interpret.json's content."""
    latents: dict[str, dict[str, dict[str, Any]]] = {}
    methods: dict[str, dict[str, Any]] = {}
    for job in jobs:
        latents.setdefault(job.method.name, {})[str(job.plan.latent)] = job.result
    for method in corpus_methods:
        mine = [j for j in jobs if j.method is method]
        latents.setdefault(method.name, {})
        methods[method.name] = {
            "kind": method.kind, "latents": len(mine), "total": method.total,
            "eligible": method.eligible,
            "explained": sum(j.result["explanation"] is not None for j in mine),
            "unsent": sum(j.result["unsent"] for j in mine),
            "malformed": {t: sum(j.result["malformed"][t] for j in mine)
                          for t in ("explanation", *TASKS)},
            **{t: summarize([j.result[t] for j in mine if t in j.result]) for t in TASKS}}
    meta = meta | {"llm": cfg.llm, "endpoint": cfg.endpoint, "simulation": logprobs,
                   "requests": {"sent": client.sent, "cached": client.hits,
                                "unsent": client.unsent},
                   "complete": client.unsent == 0,
                   "settings": {k: v for k, v in vars(cfg).items()
                                if k not in ("run", "out", "report")}}
    return Interpretation(meta, methods, latents)
