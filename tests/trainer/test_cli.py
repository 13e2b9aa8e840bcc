"""`actstore train` (trainer.cli): a config file equals flags, bad flags and settings
fail before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actstore.shell.main import main
from tests.helpers import HOOKS
from tests.trainer.helpers import assert_same_weights


def test_config_file_equals_flags(store: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["train", "--store", store, "--hook", HOOKS[0], "--arch", "relu", "--latents",
             "16", "--l1", "0.01", "0.1", "--tokens", "320", "--batch-size", "16",
             "--log-every", "5", "--checkpoint-every", "10", "--eval-contexts", "0",
             "--no-progress", "--no-plots", "--normalize", "center_scale"]
    assert main([*flags, "--out", str(tmp_path / "a")]) == 0
    assert "trained 2 dictionaries for 20 steps" in capsys.readouterr().out
    (tmp_path / "run.toml").write_text(
        f'store = "{store}"\nhook = "{HOOKS[0]}"\narch = "relu"\nlatents = [16]\n'
        'l1 = [0.01, 0.1]\ntokens = 320\nbatch_size = 999\nlog_every = 5\n'
        'checkpoint_every = 10\neval_contexts = 0\nnormalize = "center_scale"\n')
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--batch-size", "16",
                 "--out", str(tmp_path / "b"), "--no-progress", "--no-plots"]) == 0
    assert_same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize(("args", "message"), [
    (["--arch", "topk", "--latents", "8", "--k", "9"], "--k 9 must be in"),
    (["--arch", "topk", "--latents", "8"], "--k 32 (the default) must be in [1, latents=8]"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--k", "2"], "--k does not apply"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--checkpoint-every", "7"],
     "multiple of --log-every"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--hook", "nope"], "not in store"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--batch-size", "4096", "--tokens",
      "8192"], "fewer than one batch"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--resume"], "no checkpoint"),
    (["--arch", "relu", "--latents", "8", "--l1", "1", "--eval-contexts", "2"],
     "loss recovered needs the store's model (tiny-random), which failed to load"),
])
def test_bad_flags_fail_before_any_work(store: str, tmp_path: Path, args: list[str],
                                        message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--store": store, "--hook": HOOKS[0], "--tokens": "64", "--batch-size": "16",
            "--out": str(tmp_path / "out"), "--log-every": "2", "--eval-contexts": "0"}
    for flag in args:
        base.pop(flag, None)
    argv = ["train", *[x for kv in base.items() for x in kv], *args, "--no-progress"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_missing_store_and_unknown_setting(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--store", str(tmp_path / "none"), "--hook", "h", "--arch", "relu",
                 "--latents", "8", "--l1", "1", "--tokens", "8", "--batch-size", "8",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no actstore store at" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(json.dumps({"stor": "x"}))
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "unknown train settings ['stor']" in capsys.readouterr().err


def test_log_every_alone_sets_the_checkpoint_interval(store: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--log-every 32 alone was refused (the default 500 steps between checkpoints is no
    multiple of 32): the checkpoint interval now follows it, the smallest multiple >= 500.
    Both given and incompatible is still refused, in one line."""
    base = ["train", "--store", store, "--hook", HOOKS[0], "--arch", "relu", "--latents", "8",
            "--tokens", "64", "--batch-size", "16", "--eval-contexts", "0", "--no-plots",
            "--log-every", "32"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "--checkpoint-every 512" in capsys.readouterr().err.splitlines()[0]
    assert main([*base, "--checkpoint-every", "500", "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == (
        "actstore train: error: --checkpoint-every (500) must be a multiple of --log-every "
        "(32), so a resumed run logs exactly what an uninterrupted one does\n")
    assert not (tmp_path / "b").exists()
