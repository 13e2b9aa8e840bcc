"""A store on GCS end to end, through the `actstore` command, as the S3 tests do on moto:
gs:// through gcsfs against an emulator on 127.0.0.1 (tests/gcs.py, patched for the suffix
ranges and exclusive creation it lacks). Generate, interrupted and rerun (only the missing
shards computed, rows equal to a forward pass), info, verify, and a short train whose weights
equal those trained on a local copy of the same store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest

from actstore import ActivationStore
from actstore.generate import worker
from actstore.shell.main import main
from actstore.store.verify import verify
from tests.gen_fixtures import save_tiny
from tests.generate.helpers import assert_matches_forward
from tests.trainer.helpers import assert_same_weights

HOOK = "transformer.h.1"
TRAIN = ["--hook", HOOK, "--arch", "topk", "--latents", "16", "--k", "2", "--tokens", "320",
         "--batch-size", "16", "--init-rows", "64", "--warmup-steps", "4", "--log-every", "5",
         "--checkpoint-every", "10", "--eval-contexts", "0", "--no-progress", "--no-plots"]


def interrupt_after(m: pytest.MonkeyPatch, commits: int) -> None:
    """Shard writes after the first `commits` raise KeyboardInterrupt (Ctrl-C mid-job)."""
    real = worker.write_shard
    calls = {"n": 0}

    def write_shard(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > commits:
            raise KeyboardInterrupt
        return real(*args, **kw)
    m.setattr(worker, "write_shard", write_shard)


@pytest.mark.usefixtures("gcs_endpoint")
def test_generate_resume_info_verify_and_train_on_gcs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = save_tiny("gpt2", tmp_path)
    out = f"gs://actstore-test/e2e-{uuid.uuid4().hex[:8]}"
    generate = ["generate", "--model", model, "--hook", HOOK, "--dataset", "builtin:pydoc",
                "--context-length", "32", "--max-tokens", "2000", "--batch-size", "4",
                "--out", out, "--no-progress"]
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        assert main(generate) == 130
    assert "actstore generate: interrupted;" in capsys.readouterr().err
    (url,) = (f"gs://{p}" for p in fsspec.filesystem("gs").ls(out.removeprefix("gs://")))
    store = ActivationStore.open(url)
    done = store.shards_done()
    assert len(done) == 2 < store.num_shards
    assert not store.location.exists("lock/zarr.json")  # released on the way out
    before = {s: store.commit_record(s)["committed_at"] for s in done}

    assert main(generate) == 0  # the rerun computes only the missing shards
    assert store.complete
    assert {s: store.commit_record(s)["committed_at"] for s in done} == before
    assert_matches_forward(url, model, {HOOK: 1})
    assert verify(store).ok
    capsys.readouterr()
    assert main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["complete"], info["shards_done"], info["num_rows"]) == (
        True, store.num_shards, store.num_rows)
    assert main(["verify", url]) == 0
    assert capsys.readouterr().out.strip() == (f"OK: {store.num_shards} shards, "
                                               f"{store.num_rows} rows checked")

    # Trained from gs:// and from a local copy of the same objects: the same weights.
    local = tmp_path / "copy"
    fsspec.filesystem("gs").get(url.removeprefix("gs://") + "/", f"{local}/", recursive=True)
    assert main(["train", "--store", url, "--out", str(tmp_path / "run-gs"), *TRAIN]) == 0
    assert main(["train", "--store", str(local), "--out", str(tmp_path / "run-local"),
                 *TRAIN]) == 0
    assert_same_weights(tmp_path / "run-gs", tmp_path / "run-local")


@pytest.mark.usefixtures("gcs_endpoint")
@pytest.mark.parametrize("last", [b"\r", b"\n", b"\r\n", b"-", b"\x00"])
def test_the_emulator_keeps_every_byte_of_an_upload(last: bytes) -> None:
    """Objects that end in a line-break byte come back whole (tests/gcs.py splits multipart
    uploads itself: the emulator's email parser dropped a trailing 0x0D)."""
    fs = fsspec.filesystem("gs")
    path = f"actstore-test/bytes-{uuid.uuid4().hex[:8]}"
    data = bytes(range(256)) + last
    fs.pipe_file(path, data)
    assert fs.cat_file(path) == data
    assert fs.size(path) == len(data)
