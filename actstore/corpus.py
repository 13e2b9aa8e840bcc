"""Text sources and their cutting into fixed-length contexts (the store's contexts table).

Sources: `builtin:pydoc` (Python's own documentation, on every machine: no download), local
`.txt` (one document per file), `.jsonl` and `.parquet` files or globs, and Hugging Face
datasets by name or local path (streamed, so a large one is never downloaded whole).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import StoreError
from actstore.spec import BosPolicy, ContextPolicy
from actstore.store import CONTEXT_SCHEMA

BUILTIN_PYDOC = "builtin:pydoc"


class DatasetError(StoreError, ValueError):
    """The dataset cannot be read as asked (missing, no such column, empty)."""


def iter_documents(source: str, split: str | None = None, text_column: str | None = None,
                   revision: str | None = None) -> Iterator[str]:
    """Documents of a source, in a fixed order (document i has doc_id i)."""
    if source == BUILTIN_PYDOC:
        from pydoc_data.topics import topics

        yield from (topics[k] for k in sorted(topics))
        return
    files = sorted(glob.glob(source)) if any(c in source for c in "*?[") else (
        [source] if os.path.isfile(source) else [])
    if files:
        for path in files:
            yield from _file_documents(path, text_column or "text")
        return
    yield from _hf_documents(source, split or "train", text_column or "text", revision)


def _file_documents(path: str, column: str) -> Iterator[str]:
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            yield f.read()
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if column not in row:
                        raise DatasetError(f"{path}:{n} has no column {column!r}; it has "
                                           f"{sorted(row)} (use --text-column)")
                    yield str(row[column])
    elif path.endswith(".parquet"):
        schema = pq.read_schema(path)
        if column not in schema.names:
            raise DatasetError(f"{path} has no column {column!r}; it has {schema.names} "
                               "(use --text-column)")
        yield from (str(t) for t in pq.read_table(path, columns=[column]).column(0).to_pylist())
    else:
        raise DatasetError(f"{path}: unsupported file type (use .txt, .jsonl or .parquet)")


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
    for row in ds:
        if column not in row:
            raise DatasetError(f"dataset {name!r} has no column {column!r}; it has "
                               f"{sorted(row)} (use --text-column)")
        yield str(row[column])


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of what decides token ids: vocabulary, special tokens, class."""
    payload = json.dumps({"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab(),
                          "special": tokenizer.special_tokens_map}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def bos_token_id(tokenizer: Any, policy: BosPolicy) -> int | None:
    if policy == "none":
        return None
    for name in ("bos_token_id", "cls_token_id"):  # BERT-style models start with [CLS]
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise DatasetError(f"bos_policy {policy!r} needs a BOS token, and the tokenizer has none "
                       "(use --bos none)")


def build_contexts(docs: Iterator[str], tokenizer: Any, *, context_length: int,
                   policy: ContextPolicy, bos_policy: BosPolicy,
                   max_tokens: int | None) -> pa.Table:
    """The contexts table: context_id, doc_id, start, tokens (the exact model input).

    pack: documents are joined (EOS between them when the tokenizer has one) and cut into full
    contexts; doc_id is the document where a context begins. truncate: one context per
    document, cut at context_length. With a BOS policy other than none, each context starts
    with BOS; with `drop` its row is not stored (start = 1). max_tokens bounds the tokens fed.
    """
    bos = bos_token_id(tokenizer, bos_policy)
    body = context_length - (bos is not None)
    if body < 1:
        raise DatasetError(f"context_length {context_length} leaves no room after BOS")
    eos = getattr(tokenizer, "eos_token_id", None)
    budget = max_tokens if max_tokens is not None else np.iinfo(np.int64).max
    contexts: list[list[int]] = []
    doc_ids: list[int] = []
    buffer: list[int] = []
    buffer_doc: list[int] = []
    fed = 0
    for doc_id, text in enumerate(docs):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            continue
        if policy == "truncate":
            contexts.append(([bos] if bos is not None else []) + ids[:body])
            doc_ids.append(doc_id)
            fed += len(contexts[-1])
        else:
            ids = ids + ([eos] if eos is not None else [])
            buffer += ids
            buffer_doc += [doc_id] * len(ids)
            while len(buffer) >= body:
                contexts.append(([bos] if bos is not None else []) + buffer[:body])
                doc_ids.append(buffer_doc[0])
                fed += context_length
                del buffer[:body], buffer_doc[:body]
        if fed >= budget:
            break
    return _table(_within_budget(contexts, budget), doc_ids, 1 if bos_policy == "drop" else 0)


def _within_budget(contexts: list[list[int]], budget: int) -> list[list[int]]:
    lengths = np.cumsum([len(c) for c in contexts]) if contexts else np.array([])
    return contexts[: int(np.searchsorted(lengths, budget, side="right"))]


def _table(contexts: list[list[int]], doc_ids: list[int], start: int) -> pa.Table:
    n = len(contexts)
    if n == 0:
        raise DatasetError("the dataset produced no complete context (empty, or shorter than "
                           "one context with --context-policy pack)")
    return pa.table({
        "context_id": pa.array(np.arange(n), pa.int64()),
        "doc_id": pa.array(doc_ids[:n], pa.int64()),
        "start": pa.array(np.full(n, start), pa.int32()),
        "tokens": pa.array(contexts, pa.list_(pa.int32())),
    }).cast(CONTEXT_SCHEMA)
