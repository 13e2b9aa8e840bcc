"""`actstore eval --log tensorboard,wandb`: the scores of eval.json, read back with TensorBoard's
own event reader and from W&B's offline run files, in the run that trained the dictionaries
(the same W&B run id, after its last step); a missing library is refused before any work."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from actstore.shell.main import main
from tests.trainer.helpers import config
from tests.trainer.training.test_trackers import tensorboard_values
from tests.wandb_files import history
from trainer.training.train import train


def eval_rows(run: Path, n: int) -> list[dict[str, Any]]:
    """The W&B history rows holding eval scores, once there are `n`: W&B's service process
    writes the run file, and its last records can land just after `finish` returns."""
    for _ in range(40):
        rows = [r for r in history(run / "wandb") if any(k.endswith("/eval/fvu") for k in r)]
        if len(rows) >= n:
            return rows
        time.sleep(0.25)
    return rows


def test_eval_logs_its_scores_to_the_run_that_trained(store: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(config(store, run, tokens=160, holdout=0.5, log=("tensorboard,wandb",)))
    last = max(s for s, _ in tensorboard_values(run)["lr"])
    report = tmp_path / "report"
    assert main(["eval", "--run", str(run), "--out", str(report), "--ica", "none", "--ks", "1",
                 "4", "--splice-contexts", "0", "--log", "tensorboard,wandb"]) == 0
    ev = json.loads((report / "eval.json").read_text())
    want = {f"{name}/eval/{k}": v for name, s in ev["dictionaries"].items() for k, v in s.items()}
    want |= {f"baselines/{r['method']}/fvu@k{r['k']}": r["fvu"] for r in ev["frontier"]
             if r["method"] not in ev["dictionaries"]}
    assert len(want) >= 2 * 3 + 3 * 2  # two dictionaries' scores, three baselines at two k
    tb = tensorboard_values(run)
    for name, value in want.items():
        assert tb[name] == [(last, pytest.approx(value, rel=1e-6))], name
    assert max(s for s, _ in tb["lr"]) == last  # training's curves untouched
    run_id = (run / "wandb" / "run_id").read_text().strip()
    files = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert {f.stem for f in files} == {f"run-{run_id}"}  # one W&B run: the training's
    (row,) = eval_rows(run, 1)
    assert row["_step"] == last + 1  # after every step the run logged
    assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-12)
    table = next((run / "wandb").glob("offline-run-*/files/media/table/eval/frontier_*.json"))
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["method", "k", "l0", "fvu"]
    assert logged["data"] == [[r["method"], r["k"], pytest.approx(r["l0"]),
                               pytest.approx(r["fvu"])] for r in ev["frontier"]]
    # evaluated again: logged again, one W&B step later (never dropped as an old step)
    assert main(["eval", "--run", str(run), "--out", str(tmp_path / "again"), "--ica", "none",
                 "--ks", "1", "--splice-contexts", "0", "--log", "wandb"]) == 0
    assert [r["_step"] for r in eval_rows(run, 2)] == [last + 1, last + 2]


def test_a_missing_tracker_is_refused_before_any_work(store: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "report"
    assert main(["eval", "--dictionary", str(tmp_path), "--store", store, "--out", str(out),
                 "--log", "wandb"]) == 2
    assert "pip install 'actstore[wandb]'" in capsys.readouterr().err
    assert not out.exists()
