"""Contexts (actstore.generate.corpus.contexts): documents cut into the contexts table
exactly as a token-by-token reference does, and the tokenizer's hash."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from actstore.generate.corpus import (
    build_contexts,
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
