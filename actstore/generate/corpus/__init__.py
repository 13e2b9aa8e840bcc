"""A corpus: where its documents come from (`sources`) and how they are cut into the fixed-length
contexts the model reads (`contexts`, the store's contexts table).

    --dataset ──▶ sources.iter_documents: builtin:pydoc, files (local or any fsspec URL, plain
                  or compressed) or a Hugging Face dataset ──▶ texts in a fixed order (doc_id)
              ──▶ contexts.build_contexts(tokenizer): tokenized in batches, packed or truncated,
                  BOS kept or dropped ──▶ pyarrow.Table(context_id, doc_id, start, tokens)
    sources.fingerprint: the corpus's content digest (local bytes, remote ETags) for the spec
    contexts.tokenizer_hash: what decides token ids, for the spec; bos_token_id: BOS or [CLS]

Public names: `BUILTIN_PYDOC`, `DatasetError`, `bos_token_id`, `build_contexts`, `fingerprint`,
`iter_documents`, `tokenizer_hash`.
"""

from actstore.generate.corpus.contexts import bos_token_id, build_contexts, tokenizer_hash
from actstore.generate.corpus.sources import (
           BUILTIN_PYDOC,
           DatasetError,
           fingerprint,
           iter_documents,
)

__all__ = ["BUILTIN_PYDOC", "DatasetError", "bos_token_id", "build_contexts", "fingerprint",
           "iter_documents", "tokenizer_hash"]
