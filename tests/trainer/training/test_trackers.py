"""`actstore train --log tensorboard,wandb`: every metric line of metrics.jsonl, read back with
TensorBoard's own event reader and from W&B's offline run files, value for value, also across
a kill and `--resume` (no step twice); a tracker whose library is missing is refused in one
line naming the extra, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import config, die_at_step, env
from tests.wandb_files import history
from trainer.training.logs import read_metrics
from trainer.training.train import train


def jsonl_values(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tracker scalars: name -> {step: value}."""
    values: dict[str, dict[int, float]] = {}
    for r in read_metrics(out):
        for name, m in r.get("dictionaries", {}).items():
            for k, v in m.items():
                values.setdefault(f"{name}/{k}", {})[r["step"]] = float(v)
        if "dictionaries" in r:
            values.setdefault("lr", {})[r["step"]] = float(r["lr"])
    return values


def tensorboard_values(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same(out: Path) -> None:
    want = jsonl_values(out)
    tb = tensorboard_values(out)
    rows = history(out / "wandb")
    steps = [r["_step"] for r in rows if "lr" in r]
    assert steps == sorted(set(steps))  # W&B: every step once, in order
    wb: dict[str, dict[int, float]] = {}
    for r in rows:
        for k, v in r.items():
            if not k.startswith("_") and isinstance(v, int | float):
                wb.setdefault(k, {})[r["_step"]] = float(v)
    for name, series in want.items():
        assert [s for s, _ in tb[name]] == sorted(series), name  # TensorBoard: each step once
        for step, value in tb[name]:
            assert value == pytest.approx(series[step], rel=1e-6, abs=1e-12), (name, step)
        assert wb[name] == pytest.approx(series, rel=1e-12), name


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.mark.usefixtures("offline")
def test_both_trackers_log_what_metrics_jsonl_holds_also_across_a_resume(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings: dict[str, Any] = {"k": (2, 3), "latents": (24, 32), "log": ("tensorboard,wandb",),
                                "plots": True}  # a sweep of 4
    train(config(store, tmp_path / "whole", **settings))
    assert_same(tmp_path / "whole")
    assert len({k.split("/")[0] for k in jsonl_values(tmp_path / "whole")} - {"lr"}) == 4
    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        die_at_step(m, 28)  # logged 25, checkpointed 20
        with pytest.raises(KeyboardInterrupt):
            train(config(store, cut, **settings))
    train(config(store, cut, resume=True, **settings))
    assert_same(cut)
    assert jsonl_values(cut) == jsonl_values(tmp_path / "whole")
    # one W&B run across both processes, the plots logged as images at the end
    # named by each run's transaction log: wandb suffixes a folder name that would repeat
    # (a resume within the same second) with "-1", so the folder's name is not the id
    runs = {p.stem.removeprefix("run-") for p in (cut / "wandb").glob("offline-run-*/run-*.wandb")}
    assert runs == {(cut / "wandb" / "run_id").read_text().strip()}
    assert any(k.startswith("plots/curves/") for r in history(cut / "wandb") for k in r)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(cut / "tensorboard"))
    acc.Reload()
    assert {"plots/curves", "plots/latent_density"} <= set(acc.Tags()["images"])


def test_a_missing_tracker_library_is_refused_in_one_line(store: str, tmp_path: Path) -> None:
    """In a fresh process where wandb cannot be imported: exit 2, one line naming the extra,
    no run folder."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\nsys.modules['wandb'] = None  # as if not installed\n")
    out = tmp_path / "run"
    e = env()
    e["PYTHONPATH"] = f"{shim}:{e.get('PYTHONPATH', '')}"
    done = subprocess.run(
        [sys.executable, "-m", "actstore", "train", "--store", store, "--hook", "encoder.layer.1",
         "--arch", "topk", "--latents", "24", "--k", "2", "--tokens", "64", "--batch-size", "16",
         "--out", str(out), "--log", "wandb", "--no-progress", "--eval-contexts", "0"],
        capture_output=True, text=True, env=e, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'actstore[wandb]'" in lines[0]
    assert not out.exists()
