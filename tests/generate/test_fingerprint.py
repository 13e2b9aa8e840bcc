"""What a store's key follows: local weights and files by content (cached while unchanged), a hub
model by the commit of its snapshot."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import transformers

from actstore.generate.fingerprint import file_digest, model_fingerprint
from tests.gen_fixtures import save_tiny


def test_file_digests_are_cached_until_the_file_changes(tmp_path: Path,
                                                        digest_cache: Path) -> None:
    f = tmp_path / "corpus.jsonl"
    f.write_text('{"text": "one"}\n')
    first = file_digest(f)
    cache = digest_cache / "digests.json"
    entries = json.loads(cache.read_text())
    key = next(k for k in entries if k.startswith(os.path.realpath(f)))
    entries[key] = "from-the-cache"
    cache.write_text(json.dumps(entries))
    assert file_digest(f) == "from-the-cache"  # unchanged: not read again
    f.write_text('{"text": "two"}\n')  # rewritten: new size and mtime
    assert file_digest(f) not in ("from-the-cache", first)
    cache.write_text("not json")  # a broken cache is no cache
    assert file_digest(f) == file_digest(f)


def test_local_weights_are_identified_by_content(tmp_path: Path) -> None:
    path = Path(save_tiny("gpt2", tmp_path / "a"))
    first = model_fingerprint(str(path))
    assert first is not None
    assert first.startswith("sha256:")
    (path / "README.md").write_text("notes do not change the activations")
    assert model_fingerprint(str(path)) == first
    shutil.copytree(path, tmp_path / "copy")
    assert model_fingerprint(str(tmp_path / "copy")) == first
    model = transformers.GPT2LMHeadModel.from_pretrained(path)
    model.transformer.h[0].mlp.c_fc.weight.data[0, 0] += 1  # one weight retrained
    model.save_pretrained(path)
    assert model_fingerprint(str(path)) != first


def test_a_hub_model_is_pinned_to_its_snapshot_commit(tmp_path: Path) -> None:
    """A Hugging Face cache as the hub leaves it (refs/main -> snapshots/<commit>/), read
    offline: the config names the commit its files came from."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(snapshot)
    assert model_fingerprint("someone/tiny", cache_dir=str(tmp_path)) == f"commit:{commit}"
    assert model_fingerprint("someone/tiny", "main", cache_dir=str(tmp_path)) == \
        f"commit:{commit}"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_folder_without_weights_has_no_fingerprint_only_when_empty(tmp_path: Path,
                                                                    name: str) -> None:
    assert model_fingerprint(str(tmp_path)) is None
    (tmp_path / name).write_text("x")
    assert model_fingerprint(str(tmp_path)) is not None


def test_a_corpus_of_many_files_reads_and_writes_the_cache_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actstore.generate import fingerprint
    from actstore.generate.corpus import fingerprint as corpus_fingerprint

    for i in range(300):
        (tmp_path / f"part-{i:04d}.jsonl").write_text(f'{{"text": "document {i}"}}\n')
    writes, reads = [], []
    real_remember, real_load = fingerprint._remember, fingerprint._load
    monkeypatch.setattr(fingerprint, "_remember",
                        lambda *a: (writes.append(len(a[1])), real_remember(*a))[1])
    monkeypatch.setattr(fingerprint, "_load", lambda c: (reads.append(1), real_load(c))[1])
    first = corpus_fingerprint(str(tmp_path / "*.jsonl"))
    assert writes == [300]  # one write for the 300 new digests
    assert corpus_fingerprint(str(tmp_path / "*.jsonl")) == first
    assert writes == [300]  # all from the cache the second time
    assert len(reads) <= 3  # read per call (and once inside the write), not per file
