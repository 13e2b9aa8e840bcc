"""Corpus sources (actstore.generate.corpus.sources): files in every format and
compression, local, remote and on S3, Hugging Face dataset folders, clear errors for bad
files, and the fingerprint that follows content."""

from __future__ import annotations

import bz2
import gzip
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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from actstore.generate.corpus import (
    BUILTIN_PYDOC,
    DatasetError,
    fingerprint,
    iter_documents,
)


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


@pytest.mark.slow
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
