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
