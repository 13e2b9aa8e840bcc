"""Small real stores for tests: contexts, activations and a row index that agree."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from actstore import CONTEXT_SCHEMA, ActivationStore, Layout, RowIndex, StoreSpec, write_shard
from actstore.store.spec import StorageDtype

HOOKS = ("encoder.layer.1", "encoder.layer.3")


def make_spec(dtype: StorageDtype = "bfloat16", **overrides: object) -> StoreSpec:
    fields: dict[str, object] = {
        "model": "tiny-random", "hooks": HOOKS, "dataset": "builtin:pydoc",
        "context_length": 8, "tokenizer": "tiny", "tokenizer_hash": "0" * 16, "dtype": dtype,
    }
    fields.update(overrides)
    return StoreSpec(**fields)  # type: ignore[arg-type]


def make_layout(num_contexts: int = 13, context_length: int = 8) -> Layout:
    """A layout whose last shard is short, so edge handling is always exercised."""
    return Layout(num_rows=num_contexts * context_length, d_model={HOOKS[0]: 12, HOOKS[1]: 5},
                  shard_rows=32, chunk_rows=8)


@dataclass
class Expected:
    """What a filled store must return."""

    activations: dict[str, torch.Tensor]
    """Hook -> float32 tensor in store row order."""
    index: RowIndex
    """Row index in store row order."""
    contexts: pa.Table
    """The contexts table written."""


def fill_store(store: ActivationStore, seed: int = 0, shards: list[int] | None = None,
               shuffle: bool = True) -> Expected:
    """Write contexts and the given shards (all by default), rows shuffled inside each shard
    unless `shuffle` is False (then rows are in context order)."""
    gen = np.random.default_rng(seed)
    lay, ctx_len = store.layout, store.spec.context_length
    n_ctx = lay.num_rows // ctx_len
    tokens = gen.integers(0, 1000, size=(n_ctx, ctx_len), dtype=np.int32)
    contexts = pa.table({
        "context_id": pa.array(np.arange(n_ctx) + 100, pa.int64()),
        "doc_id": pa.array(np.arange(n_ctx) // 3, pa.int64()),
        "start": pa.array(np.zeros(n_ctx), pa.int32()),
        "tokens": pa.array(list(tokens), pa.list_(pa.int32())),
    }).cast(CONTEXT_SCHEMA)
    store.write_contexts(contexts)
    ctx = np.repeat(np.arange(n_ctx), ctx_len)
    pos = np.tile(np.arange(ctx_len), n_ctx).astype(np.int32)
    for s in range(lay.num_shards if shuffle else 0):  # write-time shuffle, as generation does
        a, b = lay.shard_rows_range(s)
        perm = a + gen.permutation(b - a)
        ctx[a:b], pos[a:b] = ctx[perm], pos[perm]
    index = RowIndex(ctx + 100, pos, tokens[ctx, pos])
    torch.manual_seed(seed)
    acts = {h: torch.randn(lay.num_rows, d) * 3 for h, d in lay.d_model.items()}
    for s in range(lay.num_shards) if shards is None else shards:
        a, b = lay.shard_rows_range(s)
        write_shard(store, s, {h: v[a:b] for h, v in acts.items()},
                    RowIndex(*(c[a:b] for c in index)), writer_id=f"test-{s}")
    return Expected(acts, index, contexts)


def straddling_store(url: str, dtype: StorageDtype = "bfloat16") -> ActivationStore:
    """13 contexts of 8 rows in 4 shards of 30 rows: contexts straddle the shard boundaries
    (what holding out whole contexts must cope with)."""
    layout = Layout(num_rows=104, d_model={HOOKS[0]: 12, HOOKS[1]: 5}, shard_rows=30,
                    chunk_rows=10)
    return ActivationStore.create(url, make_spec(dtype), layout)


def new_store(url: str, dtype: StorageDtype = "bfloat16") -> ActivationStore:
    return ActivationStore.create(url, make_spec(dtype), make_layout())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: How long a test rank waits for the others before failing with gloo's own error (instead of
#: hanging until pytest's timeout, which shows only the parent).
RANK_TIMEOUT_S = 120
