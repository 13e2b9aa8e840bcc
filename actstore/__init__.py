"""actstore: a compressed, chunked, resumable store of language-model activations.

Public API::

    from actstore import ActivationStore, StoreSpec, Layout
    store = ActivationStore.open("s3://bucket/stores/abc123")
    x = store.read_torch("encoder.layer.3", 0, 4096)
"""

from actstore.store.activation_store import CONTEXT_SCHEMA, ActivationStore, RowIndex
from actstore.store.errors import (
    CorruptChunkError,
    FormatError,
    ShardCommittedError,
    ShardLeaseError,
    SpecMismatchError,
    StoreAccessError,
    StoreBusyError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
)
from actstore.store.lock import JobLock
from actstore.store.spec import Codec, Layout, StoreSpec
from actstore.store.stats import HookStats
from actstore.store.verify import VerifyReport, verify
from actstore.store.writer import ShardWriter, break_lease, write_shard

__all__ = [
    "CONTEXT_SCHEMA",
    "ActivationStore",
    "Codec",
    "CorruptChunkError",
    "FormatError",
    "HookStats",
    "JobLock",
    "Layout",
    "RowIndex",
    "ShardCommittedError",
    "ShardLeaseError",
    "ShardWriter",
    "SpecMismatchError",
    "StoreAccessError",
    "StoreBusyError",
    "StoreError",
    "StoreFullError",
    "StoreNotFoundError",
    "StoreSpec",
    "VerifyReport",
    "break_lease",
    "verify",
    "write_shard",
]
