"""`actstore toy`, then `actstore train` on it: the dictionary recovers the toy store's
ground-truth features (MMCS)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actstore.generate.toy import (
    HOOK,
)
from actstore.shell.main import main


def test_a_dictionary_trained_on_a_toy_store_recovers_its_features(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["toy", "--out", str(tmp_path / "stores"), "--d", "32", "--features", "32",
                 "--active", "3", "--rows", "65536"]) == 0
    url = re.search(r"^done: (\S+): ", capsys.readouterr().out, re.M)
    assert url
    assert main(["train", "--store", url.group(1), "--hook", HOOK, "--arch", "topk",
                 "--latents", "64", "--k", "4", "--tokens", "262144", "--batch-size", "1024",
                 "--out", str(tmp_path / "run"), "--no-progress", "--no-plots"]) == 0
    line = re.search(r'"mmcs": ([\d.]+)', capsys.readouterr().out)
    assert line
    assert float(line.group(1)) > 0.9


def test_eval_on_a_hierarchical_toy_reports_absorption(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`actstore toy --hierarchy`, a Matryoshka run on it, `actstore eval`: absorption and
    MMCS to the parents in eval.json, over the parents' true occurrences in the scored rows
    (regenerated here from the toy's own law)."""
    import json

    from actstore import ActivationStore
    from actstore.loader.ground_truth import load_truth

    assert main(["toy", "--out", str(tmp_path / "stores"), "--d", "16", "--features", "48",
                 "--hierarchy", "2", "--active", "4", "--rows", "32768"]) == 0
    url = re.search(r"^done: (\S+): ", capsys.readouterr().out, re.M)
    assert url
    assert main(["train", "--store", url.group(1), "--hook", HOOK, "--arch", "matryoshka",
                 "--latents", "64", "--k", "4", "--widths", "16", "32", "--tokens", "65536",
                 "--batch-size", "1024", "--out", str(tmp_path / "run"), "--no-progress",
                 "--no-plots"]) == 0
    assert main(["eval", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "report"),
                 "--on-training-rows", "--rows", "4096", "--ica", "none"]) == 0
    scores = json.loads((tmp_path / "report" / "eval.json").read_text())["dictionaries"]
    (s,) = scores.values()
    assert 0 <= s["absorption"] <= 1
    assert 0 < s["mmcs_parents"] <= 1
    store = ActivationStore.open(url.group(1))
    truth = load_truth(store)
    assert truth is not None
    assert truth.law is not None
    last = store.layout.shard_rows_range(store.num_shards - 1)
    on = truth.law.codes(last[0], min(last[1], last[0] + 4096))[:, :16] > 0
    assert s["parent_occurrences"] == float(on.sum())
