"""Corpus sources (files local and remote, compressed, null and bad values) and their cutting
into contexts, against a plain reference packer."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from actstore.generate.corpus import (
    BUILTIN_PYDOC,
    DatasetError,
    build_contexts,
    fingerprint,
    iter_documents,
    tokenizer_hash,
)
from tests.gen_fixtures import minilm_path


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    """MiniLM's tokenizer (no EOS) and a copy that has one, so packing's separator is tested."""
    import transformers

    plain = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    with_eos = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    with_eos.eos_token = "[SEP]"
    return {"no_eos": plain, "eos": with_eos}


def docs() -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)][:12]
    return ["", texts[0][:40], *texts[1:6], "", "x", texts[6] * 8, *texts[7:]]


def reference(texts: list[str], tok: Any, length: int, policy: str, *, bos_policy: str,
              max_tokens: int | None) -> tuple[list[list[int]], list[int]]:
    """The contexts table's tokens and doc ids, the obvious way: one token at a time."""
    bos = None if bos_policy == "none" else tok.cls_token_id
    body = length - (bos is not None)
    head = [] if bos is None else [bos]
    out: list[list[int]] = []
    out_docs: list[int] = []
    stream: list[tuple[int, int]] = []  # (token, doc)
    for doc, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if policy == "truncate":
            out.append(head + ids[:body])
            out_docs.append(doc)
            continue
        stream += [(t, doc) for t in ids + ([] if tok.eos_token_id is None else [tok.eos_token_id])]
    for i in range(0, len(stream) - body + 1, body) if policy == "pack" else ():
        out.append(head + [t for t, _ in stream[i:i + body]])
        out_docs.append(stream[i][1])
    fed = np.cumsum([len(c) for c in out])
    keep = len(out) if max_tokens is None else int(np.searchsorted(fed, max_tokens, "right"))
    return out[:keep], out_docs[:keep]


@pytest.mark.parametrize("policy", ["pack", "truncate"])
@pytest.mark.parametrize("bos_policy", ["keep", "drop", "none"])
@pytest.mark.parametrize("eos", ["eos", "no_eos"])
@pytest.mark.parametrize(("length", "max_tokens"), [(2, None), (33, None), (128, 3000),
                                                    (128, 127 * 20 + 5), (1024, None)])
def test_contexts_equal_a_token_by_token_reference(  # noqa: PLR0917 (parametrized)
        tokenizers: dict[str, Any], policy: str, bos_policy: str, eos: str, length: int,
        max_tokens: int | None) -> None:
    tok = tokenizers[eos]
    table = build_contexts(iter(docs()), tok, context_length=length, policy=policy,  # type: ignore[arg-type]
                           bos_policy=bos_policy, max_tokens=max_tokens)  # type: ignore[arg-type]
    want_tokens, want_docs = reference(docs(), tok, length, policy, bos_policy=bos_policy,
                                      max_tokens=max_tokens)
    assert table.column("tokens").to_pylist() == want_tokens
    assert table.column("doc_id").to_pylist() == want_docs
    assert table.column("context_id").to_pylist() == list(range(len(want_tokens)))
    assert set(table.column("start").to_pylist()) == {1 if bos_policy == "drop" else 0}


def test_one_long_document_is_cut_whole_and_a_bound_stops_an_endless_corpus(
        tokenizers: dict[str, Any]) -> None:
    tok = tokenizers["no_eos"]
    text = " ".join(docs()) * 6  # ~200k tokens in one document
    ids = tok(text, add_special_tokens=False)["input_ids"]
    table = build_contexts(iter([text]), tok, context_length=64, policy="pack", bos_policy="none",
                           max_tokens=None)
    assert table.num_rows == len(ids) // 64
    assert np.concatenate(table.column("tokens").to_numpy(zero_copy_only=False)).tolist() == \
        ids[: table.num_rows * 64]
    endless = itertools.repeat("a short document of a few words")
    bounded = build_contexts(endless, tok, context_length=16, policy="pack", bos_policy="keep",
                             max_tokens=1000)
    assert bounded.num_rows == 1000 // 16


def test_table_chunks_keep_list_offsets_in_int32(tokenizers: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from actstore.generate.corpus import contexts

    monkeypatch.setattr(contexts, "TABLE_CONTEXTS", 7)
    table = build_contexts(iter(docs()), tokenizers["eos"], context_length=32, policy="pack",
                           bos_policy="keep", max_tokens=None)
    assert table.column("tokens").num_chunks == -(-table.num_rows // 7)
    monkeypatch.setattr(contexts, "TABLE_CONTEXTS", 1 << 20)
    whole = build_contexts(iter(docs()), tokenizers["eos"], context_length=32, policy="pack",
                           bos_policy="keep", max_tokens=None)
    assert table.equals(whole)


def write_corpus(folder: Path, rows: list[Any]) -> None:
    """The same rows as .jsonl in every compression, and as .parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": r, "id": i}) + "\n" for i, r in enumerate(rows)).encode()
    (folder / "a.jsonl").write_bytes(lines)
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (folder / "c.jsonl.bz2").write_bytes(bz2.compress(lines))
    (folder / "d.jsonl.xz").write_bytes(lzma.compress(lines))
    (folder / "e.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": pa.array(rows, pa.string())}), folder / "f.parquet")
    array = json.dumps([{"text": r, "id": i} for i, r in enumerate(rows)], indent=1)
    (folder / "g.json").write_text(array)  # one array, objects over several lines
    (folder / "h.json.gz").write_bytes(gzip.compress(lines))  # .json holding JSON lines


def test_compressed_files_globs_and_nulls(tmp_path: Path) -> None:
    rows = ["first document", None, "", "third — ünïcode ✓", "x" * 5000]
    write_corpus(tmp_path / "c", rows)
    want = ["first document", "", "", "third — ünïcode ✓", "x" * 5000]  # null: empty, same id
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.bz2", "d.jsonl.xz", "e.jsonl.zst",
                 "f.parquet", "g.json", "h.json.gz"):
        assert list(iter_documents(str(tmp_path / "c" / name))) == want, name
    assert list(iter_documents(str(tmp_path / "c" / "*"))) == want * 8
    (tmp_path / "strings.json").write_text(json.dumps(["one", None, "three"]))
    assert list(iter_documents(str(tmp_path / "strings.json"))) == ["one", "", "three"]
    (tmp_path / "one.txt").write_bytes(b"line one\r\nline two\n")
    assert list(iter_documents(str(tmp_path / "one.txt"))) == ["line one\nline two\n"]


@pytest.mark.parametrize(("content", "name", "message"), [
    (b'{"text": ["a", "b"]}\n', "x.jsonl", r"x\.jsonl:1: column 'text' holds a list, not text"),
    (b'{"text": "ok"}\n{"text": 3}\n', "x.jsonl", r"x\.jsonl:2: column 'text' holds a int"),
    (b'{"text": "ok"}\n{"text": "unterminated\n', "x.jsonl", r"x\.jsonl:2 is not JSON"),
    (b'"just a string"\n', "x.jsonl", r"x\.jsonl:1 is a JSON str, not an object"),
    (b"caf\xe9 in latin-1", "x.txt", r"x\.txt is not UTF-8 text .*re-encode it as UTF-8"),
    (b"text", "x.csv", r"unsupported file type \(use \.txt, \.jsonl, \.json or \.parquet"),
    (b'[{"text": "a"}, {"body": "b"}]', "x.json", r"x\.json item 2 has no column 'text'"),
    (b'[{"text": "a"},', "x.json", r"x\.json is not JSON: .* at line 1"),
    (b"not gzip at all", "x.jsonl.gz", r"x\.jsonl\.gz cannot be read"),
])
def test_bad_files_are_clear_errors(tmp_path: Path, content: bytes, name: str,
                                    message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        list(iter_documents(str(tmp_path / name)))


def test_bad_parquet_column_and_missing_files(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match=r"n\.parquet row 1: column 'text' holds a int"):
        list(iter_documents(str(tmp_path / "n.parquet")))
    with pytest.raises(DatasetError, match=r"has no column 'body'; it has \['text'\]"):
        list(iter_documents(str(tmp_path / "n.parquet"), text_column="body"))
    with pytest.raises(DatasetError, match="matches no file"):
        list(iter_documents(str(tmp_path / "*.jsonl")))
    with pytest.raises(DatasetError, match="no such file or folder"):
        list(iter_documents("memory://nowhere/corpus.jsonl"))


def test_remote_files_by_glob_and_by_folder() -> None:
    root = f"actstore-corpus-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    fs.pipe({f"/{root}/part-1.jsonl.gz": gzip.compress(b'{"text": "one"}\n{"text": "two"}\n'),
             f"/{root}/part-0.jsonl": b'{"text": "zero"}\n',
             f"/{root}/README.md": b"not a corpus file"})
    try:
        assert list(iter_documents(f"memory://{root}/*.jsonl*")) == ["zero", "one", "two"]
        assert list(iter_documents(f"memory://{root}/")) == ["zero", "one", "two"]
    finally:
        fs.rm(f"/{root}", recursive=True)


@pytest.mark.usefixtures("s3_endpoint")
def test_s3_corpus_and_its_missing_credentials() -> None:
    fs = fsspec.filesystem("s3")
    fs.pipe("actstore-test/corpus/a.jsonl.zst",
            zstandard.ZstdCompressor().compress(b'{"text": "from s3"}\n'))
    assert list(iter_documents("s3://actstore-test/corpus/*.jsonl.zst")) == ["from s3"]
    first = fingerprint("s3://actstore-test/corpus/")
    fs.pipe("actstore-test/corpus/a.jsonl.zst",
            zstandard.ZstdCompressor().compress(b'{"text": "edited"}\n'))
    assert fingerprint("s3://actstore-test/corpus/") not in (None, first)
    # In a fresh process (this one's s3fs instances keep their credentials): none at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"], "AWS_CONFIG_FILE": "/no",
            "AWS_SHARED_CREDENTIALS_FILE": "/no", "AWS_EC2_METADATA_DISABLED": "true"}
    code = ("from actstore.generate.corpus import iter_documents\n"
            "list(iter_documents('s3://actstore-test/corpus/*.jsonl.zst'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    assert re.search(r"StoreAccessError: cannot access s3://actstore-test/corpus.*"
                     r"AWS_ACCESS_KEY_ID", done.stderr), done.stderr[-2000:]


def test_fingerprint_follows_content_not_place(tmp_path: Path) -> None:
    write_corpus(tmp_path / "c", ["one", "two"])
    first = fingerprint(str(tmp_path / "c" / "*.jsonl*"))
    assert first is not None
    assert first.startswith("sha256:")
    shutil.copytree(tmp_path / "c", tmp_path / "copy")  # moved or copied: the same corpus
    assert fingerprint(str(tmp_path / "copy" / "*.jsonl*")) == first
    write_corpus(tmp_path / "c", ["one", "two, edited"])
    assert fingerprint(str(tmp_path / "c" / "*.jsonl*")) != first
    (tmp_path / "copy" / "g.jsonl").write_text('{"text": "a new file"}\n')
    assert fingerprint(str(tmp_path / "copy" / "*.jsonl*")) != first
    folder = fingerprint(str(tmp_path / "copy"))  # a local Hugging Face dataset folder
    (tmp_path / "copy" / "f.parquet").unlink()
    assert fingerprint(str(tmp_path / "copy")) not in (None, folder)
    assert fingerprint(BUILTIN_PYDOC) == fingerprint(BUILTIN_PYDOC) is not None
    assert fingerprint("Skylion007/openwebtext") is None  # a hub dataset: its revision names it


def test_tokenizer_hash_follows_how_text_is_cut() -> None:
    """Same vocabulary, different normalizer (no lower-casing): other ids, another hash; a
    call that pads and truncates changes nothing that decides our ids."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    first = tokenizer_hash(tok)
    tok("Hello World", truncation=True, max_length=3, padding="max_length")
    assert tokenizer_hash(tok) == first
    again = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    assert tokenizer_hash(again) == first
    cased = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True,
                                                       do_lower_case=False)
    assert cased("Hello", add_special_tokens=False)["input_ids"] != \
        tok("Hello", add_special_tokens=False)["input_ids"]
    assert tokenizer_hash(cased) != first
