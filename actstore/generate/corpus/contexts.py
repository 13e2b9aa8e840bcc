"""Documents cut into fixed-length contexts: the store's contexts table (the exact model input).

Documents are tokenized in batches (a fast tokenizer runs a batch in parallel, in Rust) and packed
with numpy, so the work is linear in the corpus: one book-length document costs what many small
ones of the same total do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from actstore.generate.corpus.sources import DatasetError
from actstore.store.activation_store import CONTEXT_SCHEMA
from actstore.store.spec import BosPolicy, ContextPolicy

BATCH_DOCS = 256
BATCH_CHARS = 4 << 20
"""Documents tokenized per call: enough for the tokenizer's threads, bounded in memory."""
PACK_TOKENS = 1 << 16
"""Tokens gathered before they are cut into contexts (amortises numpy's per-call cost)."""
TABLE_CONTEXTS = 1 << 20
"""Contexts per Arrow chunk, so list offsets stay within int32 on corpora of billions of tokens."""


def tokenizer_hash(tokenizer: Any) -> str:
    """A hash of what decides token ids: class, vocabulary and special tokens, and for a fast
    tokenizer its normalizer (lower-casing, accents), pre-tokenizer (prefix space) and model
    (BPE merges): the same vocabulary cut differently gives other ids. Padding and truncation,
    which calls change and which never touch our (unpadded) ids, are left out."""
    fields: dict[str, Any] = {"class": type(tokenizer).__name__, "vocab": tokenizer.get_vocab(),
                              "special": tokenizer.special_tokens_map}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        fields |= {k: state.get(k) for k in ("normalizer", "pre_tokenizer", "model")}
    payload = json.dumps(fields, sort_keys=True, default=str)
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


def build_contexts(docs: Iterable[str], tokenizer: Any, *, context_length: int,
                   policy: ContextPolicy, bos_policy: BosPolicy,
                   max_tokens: int | None) -> pa.Table:
    """The contexts table: context_id, doc_id, start, tokens (the exact model input).

    pack: documents are joined (EOS between them when the tokenizer has one) and cut into full
    contexts; doc_id is the document where a context begins; the last partial context is
    dropped. truncate: one context per document, cut at context_length. With a BOS policy other
    than none, each context starts with BOS; with `drop` its row is not stored (start = 1).
    max_tokens bounds the tokens fed (BOS included); documents past it are not read.
    """
    bos = bos_token_id(tokenizer, bos_policy)
    body = context_length - (bos is not None)
    if body < 1:
        raise DatasetError(f"context_length {context_length} leaves no room after BOS")
    budget = max_tokens if max_tokens is not None else np.iinfo(np.int64).max
    encoded = _encode(docs, tokenizer)
    if policy == "truncate":
        cut = _truncated(encoded, body, bos, budget)
    else:
        eos = getattr(tokenizer, "eos_token_id", None)
        cut = _packed(encoded, body, bos, eos, budget // context_length)
    return _table(*cut, start=1 if bos_policy == "drop" else 0)


def _encode(docs: Iterable[str], tokenizer: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(doc_id, token ids) of every non-empty document, in order."""
    batch: list[str] = []
    first, chars = 0, 0
    for doc_id, text in enumerate(docs):
        batch.append(text)
        chars += len(text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield from _encode_batch(tokenizer, batch, first)
            first, batch, chars = doc_id + 1, [], 0
    if batch:
        yield from _encode_batch(tokenizer, batch, first)


def _encode_batch(tokenizer: Any, texts: list[str], first: int
                  ) -> Iterator[tuple[int, np.ndarray]]:
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    for doc_id, row in enumerate(ids, first):
        if row:
            yield doc_id, np.asarray(row, dtype=np.int32)


def _packed(encoded: Iterator[tuple[int, np.ndarray]], body: int, bos: int | None,
            eos: int | None, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most `limit` full contexts: (tokens, lengths, doc each begins in). Pending tokens are
    cut every PACK_TOKENS, so each token is copied a bounded number of times."""
    packer = _Packer(body, limit)
    tail = np.asarray([] if eos is None else [eos], dtype=np.int32)
    for doc_id, ids in encoded:
        packer.add(doc_id, np.concatenate([ids, tail]))
        if packer.full:
            break
    packer.cut()
    blocks = np.concatenate(packer.blocks) if packer.blocks else np.zeros((0, body), np.int32)
    if bos is not None:
        blocks = np.concatenate([np.full((len(blocks), 1), bos, np.int32), blocks], axis=1)
    lengths = np.full(len(blocks), blocks.shape[1], dtype=np.int64)
    return blocks.reshape(-1), lengths, np.concatenate(packer.docs or [np.zeros(0, np.int64)])


class _Packer:
    """Documents' token ids in, full contexts of `body` tokens (and their first doc) out."""

    def __init__(self, body: int, limit: int) -> None:
        self.body, self.limit = body, limit
        self.blocks: list[np.ndarray] = []
        self.docs: list[np.ndarray] = []
        self.made = 0
        self._ids: list[np.ndarray] = []
        self._doc_of: list[np.ndarray] = []  # the doc of every pending token
        self._size = 0

    @property
    def full(self) -> bool:
        return self.made >= self.limit

    def add(self, doc_id: int, ids: np.ndarray) -> None:
        self._ids.append(ids)
        self._doc_of.append(np.full(len(ids), doc_id, dtype=np.int64))
        self._size += len(ids)
        if self._size >= max(self.body, PACK_TOKENS) or self.made + self._size // self.body \
                >= self.limit:
            self.cut()

    def cut(self) -> None:
        """Cut the pending tokens into full contexts; the partial rest stays pending."""
        if not self._ids:
            return
        flat, doc_of = np.concatenate(self._ids), np.concatenate(self._doc_of)
        n = min(len(flat) // self.body, self.limit - self.made)
        self.blocks.append(flat[: n * self.body].reshape(n, self.body))
        self.docs.append(doc_of[: n * self.body: self.body])
        self.made += n
        self._ids, self._doc_of = [flat[n * self.body:]], [doc_of[n * self.body:]]
        self._size = len(self._ids[0])


def _truncated(encoded: Iterator[tuple[int, np.ndarray]], body: int, bos: int | None,
               budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One context per document, while the tokens fit the budget: (tokens, lengths, docs)."""
    head = np.asarray([] if bos is None else [bos], dtype=np.int32)
    contexts: list[np.ndarray] = []
    doc_ids: list[int] = []
    fed = 0
    for doc_id, ids in encoded:
        context = np.concatenate([head, ids[:body]])
        if fed + len(context) > budget:
            break
        contexts.append(context)
        doc_ids.append(doc_id)
        fed += len(context)
    tokens = np.concatenate(contexts) if contexts else np.zeros(0, np.int32)
    return (tokens, np.asarray([len(c) for c in contexts], dtype=np.int64),
            np.asarray(doc_ids, dtype=np.int64))


def _table(tokens: np.ndarray, lengths: np.ndarray, doc_ids: np.ndarray, start: int
           ) -> pa.Table:
    """The contexts table, chunked so that no Arrow chunk's list offsets overflow int32."""
    n = len(lengths)
    if n == 0:
        raise DatasetError("the dataset produced no complete context (empty, or shorter than "
                           "one context with --context-policy pack)")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chunks = []
    for a in range(0, n, TABLE_CONTEXTS):
        b = min(n, a + TABLE_CONTEXTS)
        chunk_offsets = (offsets[a: b + 1] - offsets[a]).astype(np.int32)
        chunks.append(pa.ListArray.from_arrays(pa.array(chunk_offsets),
                                               pa.array(tokens[offsets[a]: offsets[b]])))
    return pa.table({
        "context_id": pa.array(np.arange(n), pa.int64()),
        "doc_id": pa.array(doc_ids, pa.int64()),
        "start": pa.array(np.full(n, start), pa.int32()),
        "tokens": pa.chunked_array(chunks, pa.list_(pa.int32())),
    }).cast(CONTEXT_SCHEMA)
