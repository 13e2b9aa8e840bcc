"""`actstore interpret` end to end against `transformers serve` (transformers' own
OpenAI-compatible server, its `serving` extra installed) on 127.0.0.1, offline, running a
tiny random causal LM saved to a folder (helpers.answer_lm). Between the two, the scripted
server (trainer/interpret/servers/scripted.py) forwards every request and records it, so
that what reaches the model is counted and a run can be killed at a known request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actstore.shell.flags import run_command
from actstore.shell.main import build_parser
from tests.trainer.interpret.helpers import answer_lm, interpret_process, scored_run
from trainer.interpret.cli import COMMAND
from trainer.interpret.pipeline import TASKS
from trainer.interpret.servers.scripted import Answer, Script, serve
from trainer.interpret.servers.transformers_serve import transformers_serve

pytest.importorskip("transformers.cli.transformers",
                    reason="this transformers has no `transformers serve`")
pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")

def interpret(argv: list[str]) -> int:
    """`actstore interpret ARGV…` in this process."""
    args = vars(build_parser([COMMAND]).parse_args(argv))
    del args["command"]
    return run_command("actstore interpret", lambda: COMMAND.run(args), COMMAND.resume_hint)


#: Requests answered before the first run is killed.
KILL_AT = 20


def forwarding(base: str) -> Any:
    """An answer that is the real server's."""
    def answer(body: dict[str, Any]) -> Answer:
        req = urllib.request.Request(base + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                out: dict[str, Any] = json.loads(r.read())
                return out
        except urllib.error.HTTPError as e:
            return e.code, {}
    return answer


@pytest.mark.slow
@pytest.mark.timeout(900)  # the server's start alone may take its 300 s on a saturated machine
def test_interpret_against_transformers_serve(tmp_path: Path) -> None:
    """Explanations and scores for every method, a killed run resumed without repeating a
    request, a rerun sending none, malformed answers counted, and detection and fuzzing at
    chance: the LM's labels cannot know the text, so nothing in the prompts gives them away."""
    lm = str(answer_lm(tmp_path / "lm"))
    out = tmp_path / "out"
    with transformers_serve(lm, log=tmp_path / "serve.log") as server:
        run, report = scored_run(tmp_path)  # while the server starts
        script = Script(forwarding(server.ready()))
        with serve(script) as url:
            killed_then_resumed(script, out, [
                "interpret", "--run", str(run), "--out", str(out), "--report", str(report),
                "--llm", lm, "--endpoint", url, "--latents", "2", "--window", "8",
                "--explain-examples", "4", "--quantiles", "3", "--score-examples", "6",
                "--batch", "3", "--max-tokens", "3", "--backoff", "0.05",
                "--retry-deadline", "60"])
    check(script, out)


def killed_then_resumed(script: Script, out: Path, argv: list[str]) -> None:
    """A run SIGKILLed at its KILL_AT-th answer, resumed, then run again."""
    proc: subprocess.Popen[bytes] | None = None
    forward = script.answer

    def killing(body: dict[str, Any]) -> Answer:
        if len(script.bodies) == KILL_AT and proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return 503, {}
        return forward(body)

    script.answer = killing
    proc = interpret_process([*argv, "--concurrency", "1"])
    assert proc.wait(timeout=300) == -signal.SIGKILL
    assert len(script.bodies) == KILL_AT
    assert not (out / "interpret.json").exists()
    assert interpret([*argv, "--concurrency", "2"]) == 0
    (out / "first.json").write_text((out / "interpret.json").read_text())
    assert interpret(argv) == 0


def check(script: Script, out: Path) -> None:
    """What the three runs asked and wrote."""
    first = json.loads((out / "first.json").read_text())
    keys = [json.dumps(b, sort_keys=True) for b in script.bodies]
    assert len(keys) == len(set(keys))  # nothing answered before the kill was asked again
    total = len(keys)
    assert first["meta"]["requests"] == {"sent": total - KILL_AT, "cached": KILL_AT,
                                         "unsent": 0}
    second = json.loads((out / "interpret.json").read_text())
    assert second["meta"]["requests"] == {"sent": 0, "cached": total, "unsent": 0}
    assert second["latents"] == first["latents"]
    # transformers serve returns no log-probs: no simulation, said so
    assert first["meta"]["simulation"] is False
    assert set(first["methods"]) == {"neurons-relu", "pca", "neurons", "random"}
    scores: dict[str, list[float]] = {"detection": [], "fuzzing": []}
    for name, summary in first["methods"].items():
        latents = first["latents"][name]
        assert len(latents) == summary["latents"] == 2
        for r in latents.values():
            assert r["explanation"] is not None  # the LM's label lists, on one line
            for task in TASKS:  # every answer is scored or counted as malformed
                assert r["answered"][task] + r["malformed"][task] == r["asked"][task]
            for task, found in scores.items():
                assert r["asked"][task] >= 1
                if r[task] is not None:
                    found.append(r[task])
        assert summary["malformed"]["detection"] == sum(
            r["malformed"]["detection"] for r in latents.values())
    malformed = sum(s["malformed"][t] for s in first["methods"].values() for t in scores)
    assert 0 < malformed < 64  # lists of 2 for 3 windows: counted, the rest scored
    # 8 latents per task, each a balanced accuracy of random labels on 6 + 6 windows or
    # fewer (sd <= 0.2): the mean of 16 is within 0.2 of chance but once in ~10^4
    pooled = scores["detection"] + scores["fuzzing"]
    assert len(pooled) >= 12
    assert float(np.mean(pooled)) == pytest.approx(0.5, abs=0.2)
