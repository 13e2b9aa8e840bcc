"""The store: the Zarr v3 format, its reader and its writer. Imports nothing above it.

 writer side                                   reader side
 ───────────                                   ───────────
 lock.JobLock (lock/zarr.json, heartbeat)      activation_store.ActivationStore.open(url, spec?)
   └─ ActivationStore.create(url, spec, layout)   ├─ read / read_torch / read_float32 (rows)
        ├─ write_contexts (Parquet)               ├─ read_index → RowIndex(context, pos, token)
        └─ writer.ShardWriter per shard           ├─ read_contexts → pyarrow.Table
             lease → encode → put_many → commit   ├─ stats(hook) → stats.HookStats
                       │                          └─ shards_done / complete
                       ▼
 location.Location (fsspec: file, memory, s3, gs): atomic put, exclusive create, range get
 shard_codec: ShardEncoder / ShardDecoder — zarr v3 sharding bytes, chunk-parallel
 format.py: array paths and dtypes; spec.py: StoreSpec (identity → key), Layout
 quant/: 8-bit float rows, a scale per row (quantise in the writer, dequantise anywhere)
 verify.py: checksums, integrity, exactly-once
 errors.py: what the store raises, and which faults pass (`transient`); processes.py: /proc

Public names: the top-level `actstore` re-exports them (ActivationStore, StoreSpec, Layout,
RowIndex, JobLock, ShardWriter, write_shard, verify, HookStats, the errors).

Public names (what the module `actstore.store` exported before it was a package):
`ActivationStore`, `CONTEXT_SCHEMA`, `RowIndex`.
"""

from actstore.store.activation_store import CONTEXT_SCHEMA, ActivationStore, RowIndex

__all__ = ["CONTEXT_SCHEMA", "ActivationStore", "RowIndex"]
