"""`actstore interpret --run DIR --llm NAME_OR_PATH --out REPORT`: flags parse into one
`InterpretConfig`, then it runs."""

from __future__ import annotations

from typing import Any

from actstore.shell.flags import Command, add_fields, from_flags
from trainer.interpret.config import InterpretConfig

#: The flags in --help's order: what to read, the model, how many, the prompts, the cost.
_ORDER = ("run", "out", "report", "delphi_export", "llm", "endpoint", "api_key_env", "latents",
          "baselines", "baseline_k", "window", "explain_examples", "score_examples",
          "quantiles", "batch", "simulate_examples", "max_tokens", "concurrency",
          "max_requests", "timeout", "retry_deadline", "backoff", "device", "seed")


def add_interpret_parser(sub: Any) -> None:
    p = sub.add_parser(
        "interpret", help="explain and score latents with a language model (autointerp)",
        description="For a sample of latents of every dictionary of a run and of the PCA, ICA, "
        "neuron and random baselines, an LM (an OpenAI-compatible endpoint, or a local "
        "transformers model) explains each from its top-activating held-out windows, then "
        "scores the explanation on windows it never saw: detection and fuzzing (balanced "
        "accuracy), simulation (Pearson r, when the backend returns log-probs). Answers are "
        "cached in OUT/cache, so a rerun or a resumed run repeats no request. Writes "
        "interpret.json, interpret.md, scores.svg; adds the explanations to the eval report.")
    add_fields(p, InterpretConfig, only=_ORDER)


def run_interpret(args: dict[str, Any]) -> int:
    from trainer.interpret.pipeline import interpret
    from trainer.interpret.results import write_results

    cfg = from_flags(InterpretConfig, args)
    result, client = interpret(cfg)
    out = write_results(result, cfg)
    for name, s in result.methods.items():
        cells = "  ".join(f"{t} {s[t]['mean']:.3f}" if s[t]["n"] else f"{t} -"
                          for t in ("detection", "fuzzing", "simulation"))
        bad = sum(s["malformed"].values())
        print(f"{name}: {s['explained']}/{s['latents']} explained  {cells}  malformed {bad}")
    print(f"requests: {client.sent} sent, {client.hits} from the cache"
          + (f", {client.unsent} not sent (--max-requests): rerun to continue"
             if client.unsent else ""))
    print(f"results: {out}/interpret.json ({out}/interpret.md, {cfg.report_dir}/index.html)")
    return 0


#: Every answer is cached as it arrives: a rerun continues where this one stopped.
RESUME_HINT = "answers so far are cached; rerun the same command to continue"
COMMAND = Command("interpret", add_interpret_parser, run_interpret, RESUME_HINT,
                  config=InterpretConfig)
"""`actstore interpret` (registered as an `actstore.commands` entry point)."""
