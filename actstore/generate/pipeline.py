"""`actstore generate`: run a model over a corpus and fill a store, resumably, with Ray workers.

Order of work (cheap checks first, so bad flags fail before any model or data is loaded):
flags → model config + hook names (meta device, no weights) → tokenizer → spec → key → reuse a
complete store, or take the job lock, build or reread the contexts, and run the missing shards.
"""

from __future__ import annotations

import sys
import time
import uuid

import pyarrow as pa

from actstore.generate import corpus
from actstore.generate.config import GenerateConfig, GenerateResult
from actstore.generate.executors.base import Executor
from actstore.generate.executors.choose import choose_executor
from actstore.generate.identity import hook_widths, make_spec, store_url
from actstore.model.capture import load_config, load_tokenizer, skeleton
from actstore.store.activation_store import ActivationStore, read_root_attrs, stored_row_counts
from actstore.store.errors import FormatError
from actstore.store.location import Location
from actstore.store.lock import JobLock
from actstore.store.spec import DTYPE_ITEMSIZE, Layout, StoreSpec
from actstore.store.writer import break_lease


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Fill (or reuse) the store for `cfg`; see the module docstring for the order of work."""
    t0 = time.perf_counter()
    Location.from_url(cfg.out, cfg.storage_options).preflight("--out")
    spec = make_spec(cfg)
    url = store_url(cfg, spec)
    loc = Location.from_url(url, cfg.storage_options)
    exists = read_root_attrs(loc) is not None
    store = ActivationStore.open(url, spec, cfg.storage_options) if exists else None
    if store is not None and store.complete:
        return GenerateResult(url, True, 0, time.perf_counter() - t0, 0)
    # Bad data must fail before anything is created, so the corpus is read before the lock.
    contexts = None if exists else _build_contexts(cfg)
    executor = choose_executor(cfg)
    plan = executor.start()  # an unreachable cluster fails here, before the lock
    try:
        if cfg.progress:
            print(f"generate: {plan.describe()}", file=sys.stderr)
        store, missing = _locked_run(cfg, spec, url, loc, contexts, executor=executor)
    finally:
        executor.finish()
    bytes_written = sum(o["size"] for s in missing
                        for k, o in store.commit_record(s)["objects"].items()
                        if k.startswith("activations/"))
    rows = sum(b - a for a, b in map(store.layout.shard_rows_range, missing))
    return GenerateResult(url, False, rows, time.perf_counter() - t0, bytes_written)


def _locked_run(cfg: GenerateConfig, spec: StoreSpec, url: str, loc: Location,
                contexts: pa.Table | None, *, executor: Executor
                ) -> tuple[ActivationStore, list[int]]:
    """Under the job lock: create or reopen the store, run its missing shards on the
    (started) executor."""
    lock = JobLock(loc, f"gen-{uuid.uuid4().hex[:8]}")
    lock.acquire()
    try:
        store = _create_or_open(cfg, spec, url, contexts, executor.plan.workers)
        for shard in store.shards_missing():  # we hold the job lock: leases are from dead jobs
            break_lease(store, shard)
        missing = store.shards_missing()
        executor.run(store, missing, lock.job_id)
    except BaseException as e:
        try:
            lock.release()
        except Exception as r:  # the fault that stopped the run may stop this too
            e.add_note(f"(releasing the job lock failed as well: {type(r).__name__}: {r}; "
                       "it expires by itself)")
        raise
    lock.release()
    return store, missing


def _build_contexts(cfg: GenerateConfig) -> pa.Table:
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    docs = corpus.iter_documents(cfg.dataset, cfg.split, cfg.text_column, cfg.dataset_revision)
    return corpus.build_contexts(docs, tokenizer, context_length=cfg.context_length,
                                 policy=cfg.context_policy, bos_policy=cfg.bos,
                                 max_tokens=cfg.max_tokens)


def _create_or_open(cfg: GenerateConfig, spec: StoreSpec, url: str,
                    contexts: pa.Table | None, workers: int) -> ActivationStore:
    if read_root_attrs(Location.from_url(url, cfg.storage_options)) is not None:
        store = ActivationStore.open(url, spec, cfg.storage_options)  # made earlier
        if store.contexts_missing():
            _rebuild_contexts(cfg, store, contexts)
        return store
    if contexts is None:
        contexts = _build_contexts(cfg)
    num_rows = int(stored_row_counts(contexts).sum())
    d_model = hook_widths(skeleton(load_config(cfg.model, cfg.revision)), spec.hooks)
    row_bytes = max(d_model.values()) * DTYPE_ITEMSIZE[cfg.store_dtype]
    # Several shards per worker keep every worker busy and make retries cheap.
    shard_bytes = min(cfg.shard_mib << 20, max(1, num_rows // (4 * workers)) * row_bytes)
    layout = Layout.for_sizes(num_rows, d_model, cfg.store_dtype, shard_bytes=shard_bytes,
                              chunk_bytes=min(2 << 20, shard_bytes))
    return ActivationStore.create(url, spec, layout, cfg.storage_options, contexts=contexts)


def _rebuild_contexts(cfg: GenerateConfig, store: ActivationStore,
                      contexts: pa.Table | None) -> None:
    """Write the contexts table again (deleted, or lost by a store made before the table was
    written ahead of the root): it is a function of the spec, so the rebuilt one is the same,
    which the row count confirms."""
    print(f"store {store.url}: its contexts table is missing; rebuilding it from the corpus",
          file=sys.stderr)
    table = contexts if contexts is not None else _build_contexts(cfg)
    rows = int(stored_row_counts(table).sum())
    if rows != store.num_rows:
        raise FormatError(f"store {store.url}: the corpus now gives {rows} rows, the store holds "
                          f"{store.num_rows}; the dataset changed since the store was made")
    others = set(store.contexts_missing()) - {"*.parquet", "part-00000.parquet"}
    if others:  # generation writes one part; a store made otherwise is not ours to rebuild
        raise FormatError(f"store {store.url}: cannot rebuild contexts parts {sorted(others)}")
    store.write_contexts(table)
