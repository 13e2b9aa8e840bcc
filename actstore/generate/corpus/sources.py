"""Documents of a corpus, in a fixed order (document i has doc_id i), and what identifies them.

Sources:
- `builtin:pydoc`: Python's own documentation topics, on every machine (no download);
- files, local or at any fsspec URL (`s3://`, `gs://`, `memory://`): one file, a glob, or a
  remote folder. `.txt` is one document per file, `.jsonl` one per line, `.json` one per item
  of its array (or per line), `.parquet` one per row; each may be compressed (`.gz`, `.bz2`,
  `.xz`, `.zst`). Files are streamed, never read whole (a `.txt` document and a `.json` array
  excepted);
- a Hugging Face dataset by name or local folder (streamed, so a large one is never downloaded
  whole).

A null text is an empty document: it makes no tokens but keeps its doc_id, so doc ids stay row
numbers of the source and any stored row can be traced back to it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
from fsspec.core import OpenFile
from fsspec.implementations.local import LocalFileSystem

from actstore.generate.fingerprint import digest, file_digests
from actstore.store.errors import StoreError
from actstore.store.location import access_errors, url_to_fs

BUILTIN_PYDOC = "builtin:pydoc"
KINDS = (".txt", ".jsonl", ".json", ".parquet")
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_GLOB = "*?["


class DatasetError(StoreError, ValueError):
    """The dataset cannot be read as asked (missing, no such column, not text, empty)."""


def iter_documents(source: str, split: str | None = None, text_column: str | None = None,
                   revision: str | None = None) -> Iterator[str]:
    """Documents of a source, in a fixed order (document i has doc_id i)."""
    column = text_column or "text"
    if source == BUILTIN_PYDOC:
        yield from _pydoc_topics()
        return
    files = _files(source)
    if files is not None:
        fs, paths = files
        for path in paths:
            yield from _file_documents(fs, path, column)
        return
    yield from _hf_documents(source, split or "train", column, revision)


def fingerprint(source: str) -> str | None:
    """What identifies the corpus's content, beyond its name: a digest of the embedded text, of
    local files' bytes, or of remote files' version tags (ETag and the like, so a reused store
    is found without reading the corpus). None for a Hugging Face hub dataset, which is named by
    its revision. A store is keyed by this, so an edited corpus never reuses a stale store."""
    if source == BUILTIN_PYDOC:  # its text changes with Python's version
        text = hashlib.sha256("\0".join(_pydoc_topics()).encode()).hexdigest()
        return digest([(BUILTIN_PYDOC, text)])
    files = _files(source)
    if files is None and os.path.isdir(source):  # a local Hugging Face dataset folder
        files = LocalFileSystem(), _folder_files(source)
    if files is None:
        return None
    fs, paths = files
    with access_errors(source):
        tags = file_digests(paths) if isinstance(fs, LocalFileSystem) else [
            f"{fs.size(p)}:{fs.checksum(p)}" for p in paths]
    return digest(zip((os.path.basename(p) for p in paths), tags, strict=True))


def _pydoc_topics() -> Iterator[str]:
    from pydoc_data.topics import topics

    return (topics[k] for k in sorted(topics))


def _kind(path: str) -> tuple[str, str | None]:
    """(`.txt`/`.jsonl`/`.json`/`.parquet` or another suffix, compression) of a file name."""
    stem, suffix = os.path.splitext(path)
    if suffix.lower() in COMPRESSIONS:
        return os.path.splitext(stem)[1].lower(), COMPRESSIONS[suffix.lower()]
    return suffix.lower(), None


def _files(source: str) -> tuple[Any, list[str]] | None:
    """The filesystem and sorted files a source names, or None when it names none (then it is a
    Hugging Face dataset). A glob that matches nothing is an error, not a dataset name."""
    remote = "://" in source
    if not remote and not any(c in source for c in _GLOB) and not os.path.isfile(source):
        return None  # a dataset name or a local dataset folder
    with access_errors(source):
        fs, path = url_to_fs(source)
        fs.invalidate_cache()  # a listing or ETag cached earlier in this process may be stale
        if any(c in path for c in _GLOB):
            paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
            if not paths:
                raise DatasetError(f"--dataset {source} matches no file")
        elif fs.isfile(path):
            paths = [path]
        elif remote and fs.isdir(path):
            paths = sorted(p for p in fs.find(path) if _kind(p)[0] in KINDS)
            if not paths:
                raise DatasetError(f"--dataset {source} holds no {'/'.join(KINDS)} file")
        else:
            raise DatasetError(f"--dataset {source}: no such file or folder")
    return fs, paths


def _folder_files(folder: str) -> list[str]:
    """Every file under a local folder, hidden ones (`.git`, caches) left out, sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, n) for n in names if not n.startswith(".")]
    return sorted(found)


def _file_documents(fs: Any, path: str, column: str) -> Iterator[str]:
    kind, compression = _kind(path)
    if kind not in KINDS:
        raise DatasetError(f"{path}: unsupported file type (use .txt, .jsonl, .json or "
                           f".parquet, optionally compressed as {', '.join(COMPRESSIONS)})")
    try:
        with access_errors(path), OpenFile(fs, path, "rb", compression=compression) as raw:
            if kind == ".parquet":
                yield from _parquet_documents(raw, path, column)
                return
            text = io.TextIOWrapper(raw, encoding="utf-8", newline=None if kind == ".txt" else "")
            if kind == ".txt":
                yield text.read()
            else:  # .jsonl, or .json: one array, or one object per line (as Hugging Face)
                head = text.read(4096)
                if kind == ".json" and head.lstrip().startswith("["):
                    yield from _json_array_documents(head + text.read(), path, column)
                else:
                    yield from _jsonl_documents(_lines(head, text), path, column)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start} of a "
                           "block); re-encode it as UTF-8") from None
    except (EOFError, OSError) as e:
        if isinstance(e, StoreError):
            raise
        raise DatasetError(f"{path} cannot be read: {type(e).__name__}: {e}") from e


def _lines(head: str, rest: io.TextIOWrapper) -> Iterator[str]:
    """The lines of a stream whose first `head` characters were read already."""
    yield from io.StringIO(head + rest.readline())  # the head's last line, completed
    yield from rest


def _json_array_documents(text: str, path: str, column: str) -> Iterator[str]:
    """A .json file holding one array: of objects (their `column`) or of strings."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path} holds a JSON {type(rows).__name__}, not an array")
    for n, row in enumerate(rows, 1):
        if isinstance(row, dict) and column not in row:
            raise DatasetError(f"{path} item {n} has no column {column!r}; it has "
                               f"{sorted(row)} (use --text-column)")
        value = row[column] if isinstance(row, dict) else row
        yield as_text(value, f"{path} item {n}", column)


def _jsonl_documents(lines: Iterator[str], path: str, column: str) -> Iterator[str]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n} is not JSON: {e.msg}") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{n} is a JSON {type(row).__name__}, not an object "
                               f"with a {column!r} field")
        if column not in row:
            raise DatasetError(f"{path}:{n} has no column {column!r}; it has {sorted(row)} "
                               "(use --text-column)")
        yield as_text(row[column], f"{path}:{n}", column)


def _parquet_documents(raw: Any, path: str, column: str) -> Iterator[str]:
    parquet = pq.ParquetFile(raw)
    names = parquet.schema_arrow.names
    if column not in names:
        raise DatasetError(f"{path} has no column {column!r}; it has {names} (use --text-column)")
    row = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield as_text(value, f"{path} row {row}", column)


def as_text(value: Any, where: str, column: str) -> str:
    """A document's text; null is the empty document, anything else that is not text an error
    (str() of a list or a number would silently feed its repr to the model)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise DatasetError(f"{where}: column {column!r} holds a {type(value).__name__}, not text "
                       "(use --text-column to pick a text column)")


def _hf_documents(name: str, split: str, column: str, revision: str | None) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, revision=revision, streaming=True)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DatasetError(f"cannot load dataset {name!r} (split {split!r}): {e}") from e
    columns = list(ds.features or {}) if ds.features is not None else None
    if columns is not None and column not in columns:
        raise DatasetError(f"dataset {name!r} has no column {column!r}; it has {columns} "
                           "(use --text-column)")
    for n, row in enumerate(ds):
        if column not in row:
            raise DatasetError(f"dataset {name!r} has no column {column!r}; it has "
                               f"{sorted(row)} (use --text-column)")
        yield as_text(row[column], f"dataset {name!r} row {n}", column)
