"""actstore: a compressed, chunked, resumable store of language-model activations.

    shell/     the `actstore` command: info, verify, ls, generate, toy, bench (train, eval and
               steer come from the trainer through `actstore.commands` entry points)
    bench/     `actstore bench`: every stage beside its ceiling, measured in the same run
    generate/  a model run over a corpus ──▶ a store, shard by shard, here or on Ray actors
    loader/    a store ──▶ shuffled, resumable, rank-split batches; the held-out slice; a toy
               store's ground truth
    model/     Hugging Face models: loading, hook names, hooks that read, replace or add
    store/     the Zarr v3 format, its reader, its writer and the job lock
Each layer imports only the layers below it (pyproject.toml, `[tool.importlinter]`).

Public API (the store's names, from the modules of `actstore.store`)::

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
