"""A corpus: where its documents come from (`sources`) and how they are cut into the fixed-length
contexts the model reads (`contexts`, the store's contexts table)."""

from actstore.generate.corpus.contexts import bos_token_id, build_contexts, tokenizer_hash
from actstore.generate.corpus.sources import (
           BUILTIN_PYDOC,
           DatasetError,
           fingerprint,
           iter_documents,
)

__all__ = ["BUILTIN_PYDOC", "DatasetError", "bos_token_id", "build_contexts", "fingerprint",
           "iter_documents", "tokenizer_hash"]
