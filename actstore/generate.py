"""`actstore generate`: run a model over a corpus and fill a store, resumably, with Ray workers.

Order of work (cheap checks first, so bad flags fail before any model or data is loaded):
flags → model config + hook names (meta device, no weights) → tokenizer → spec → key → reuse a
complete store, or take the job lock, build or reread the contexts, and run the missing shards.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import torch
from torch import nn

from actstore import corpus
from actstore.capture import load_config, load_tokenizer, model_path, resolve_hooks, skeleton
from actstore.errors import FormatError, StoreError
from actstore.fingerprint import model_fingerprint
from actstore.location import Location
from actstore.reaper import Reaper
from actstore.spec import (
    DTYPE_ITEMSIZE,
    BosPolicy,
    ContextPolicy,
    Layout,
    StorageDtype,
    StoreSpec,
)
from actstore.store import ActivationStore, read_root_attrs, stored_row_counts
from actstore.writer import JobLock, break_lease

if TYPE_CHECKING:
    from actstore.ray_cluster import WorkerPlan


class ModelNotFoundError(StoreError, ValueError):
    """The model named by --model cannot be loaded."""


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `actstore generate` takes. Checked in __post_init__, read-only after."""

    model: str
    """Hugging Face model name or local path."""
    hooks: tuple[str, ...]
    """Module paths to capture (several in one pass)."""
    dataset: str
    """`builtin:pydoc`; .txt/.jsonl/.json/.parquet files, optionally .gz/.bz2/.xz/.zst: a file
    or a glob, local or at an fsspec URL (s3://bucket/c/*.jsonl.zst), or a remote folder; or a
    Hugging Face dataset by name or local folder."""
    out: str
    """Root URL; the store goes to `<out>/<key>`."""
    context_length: int = 128
    """Tokens per context, BOS included."""
    max_tokens: int | None = None
    """Upper bound on tokens fed to the model, BOS included (default: the whole dataset)."""
    revision: str | None = None
    """Model revision: commit, tag or branch (default: the latest; local folders have none)."""
    dataset_revision: str | None = None
    """Revision of a Hugging Face hub dataset (default: the latest). Files, folders and the
    embedded corpus are identified by their content instead."""
    split: str | None = None
    """Dataset split (HF datasets; default train)."""
    text_column: str | None = None
    """Column holding the text (default `text`)."""
    bos: BosPolicy = "keep"
    """keep: BOS row stored; drop: BOS fed, row not stored; none: no BOS."""
    context_policy: ContextPolicy = "pack"
    """pack documents into full contexts, or truncate one context per document."""
    store_dtype: StorageDtype = "bfloat16"
    """Storage dtype of activations."""
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    """Model dtype (default: bfloat16 on GPU, float32 on CPU)."""
    device: Literal["cuda", "cpu"] | None = None
    """Where workers run the model (default: cuda when Ray sees GPUs, else cpu)."""
    workers: int | None = None
    """Number of workers (default: one per GPU; on CPU, the cores Ray has divided by
    --cpus-per-worker)."""
    cpus_per_worker: float | None = None
    """CPUs each CPU worker reserves in Ray and runs torch threads on (default: the cores Ray
    has divided by --workers, else 1, so workers x threads = the cores)."""
    batch_size: int = 8
    """Contexts per forward pass."""
    shard_mib: int = 256
    """Raw size of a shard (the unit of work and of upload); lowered so every worker gets
    several shards on small stores."""
    address: str | None = None
    """Ray cluster address (default: RAY_ADDRESS, else a local Ray)."""
    executor: Literal["auto", "ray", "local"] = "auto"
    """ray: Ray workers; local: one worker in this process using every core, no Ray; auto:
    ray when a cluster (--address, RAY_ADDRESS), --workers or several GPUs are there, else
    local."""
    max_retries: int = 3
    """How often a shard is retried after its worker died."""
    progress: bool = True
    """Show a progress bar."""
    verify: bool = False
    """After generating (or reusing), read every chunk and check exactly-once coverage."""
    storage_options: dict[str, str] = field(default_factory=dict)
    """fsspec options for the store URL."""

    def __post_init__(self) -> None:
        checks = [
            (self.context_length >= 2, f"--context-length must be >= 2, got {self.context_length}"),
            (self.max_tokens is None or self.max_tokens >= self.context_length,
             f"--max-tokens ({self.max_tokens}) must be >= --context-length"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.workers is None or self.workers >= 1,
             f"--workers must be >= 1, got {self.workers}"),
            (self.shard_mib >= 1, f"--shard-mib must be >= 1, got {self.shard_mib}"),
            (self.cpus_per_worker is None or self.cpus_per_worker > 0,
             "--cpus-per-worker must be > 0"),
            (bool(self.hooks), "at least one --hook is needed"),
            (self.device != "cuda" or torch.cuda.is_available() or self.address is not None,
             "--device cuda but no CUDA device is visible"),
            (self.executor in ("auto", "ray", "local"),
             f"--executor must be auto, ray or local, got {self.executor!r}"),
            (self.executor != "local" or (self.address is None and (self.workers or 1) == 1),
             "--executor local runs one worker in this process: --address and --workers > 1 "
             "need --executor ray"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        StoreSpec(model=self.model, hooks=self.hooks, dataset=self.dataset,  # field checks
                  context_length=self.context_length, tokenizer="-", tokenizer_hash="-",
                  bos_policy=self.bos, context_policy=self.context_policy,
                  dtype=self.store_dtype)


@dataclass(frozen=True)
class GenerateResult:
    """What a run did."""

    url: str
    """The store."""
    reused: bool
    """True when the store was already complete."""
    tokens: int
    """Rows written by this run."""
    seconds: float
    """Wall time of this run."""
    compressed_bytes: int
    """Bytes of activation objects written by this run."""


def device_and_dtype(cfg: GenerateConfig) -> tuple[str, str]:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, cfg.dtype or ("bfloat16" if device == "cuda" else "float32")


def make_spec(cfg: GenerateConfig) -> StoreSpec:
    """The spec, from the model's config and tokenizer and the digests of its weights and
    corpus files (hashed, not loaded; cached while the files are unchanged)."""
    try:
        config = load_config(cfg.model, cfg.revision)
    except (OSError, ValueError) as e:  # transformers' "not a folder nor a model id" family
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"--model {cfg.model}: cannot load its config ({first}). Pass a local folder "
            "holding config.json or a Hugging Face model name (offline, it must be in the "
            "cache)") from None
    model = skeleton(config)  # on the meta device: no weights
    hooks = resolve_hooks(model, cfg.hooks)
    hook_widths(model, hooks)  # a hook without one row per token fails here
    tokenizer = load_tokenizer(cfg.model, cfg.revision)
    _, model_dtype = device_and_dtype(cfg)
    return StoreSpec(
        model=cfg.model, model_revision=cfg.revision,
        model_weights=model_fingerprint(model_path(cfg.model), cfg.revision), hooks=hooks,
        dataset=cfg.dataset,
        dataset_revision=dataset_identity(cfg), split=cfg.split, text_column=cfg.text_column,
        context_length=cfg.context_length, tokenizer=cfg.model,
        tokenizer_hash=corpus.tokenizer_hash(tokenizer), bos_policy=cfg.bos,
        context_policy=cfg.context_policy, max_tokens=cfg.max_tokens, dtype=cfg.store_dtype,
        model_dtype=model_dtype)


def dataset_identity(cfg: GenerateConfig) -> str | None:
    """The spec's dataset revision: the one given for a hub dataset, the content's digest for
    files, local folders and the embedded corpus (whose text changes with Python's version)."""
    content = corpus.fingerprint(cfg.dataset)
    if content is not None and cfg.dataset_revision is not None:
        raise ValueError(f"--dataset-revision names a Hugging Face hub dataset's revision; "
                         f"{cfg.dataset} is identified by its content instead: drop the flag")
    return cfg.dataset_revision or content


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Fill (or reuse) the store for `cfg`; see the module docstring for the order of work."""
    from actstore.ray_cluster import choose_executor, connect

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
    plan, why = choose_executor(cfg)
    cluster = None
    if plan is None:
        cluster = connect(cfg)  # an unreachable cluster fails here, before the lock
        plan = cluster.plan._replace(why=why)
    if cfg.progress:
        print(f"generate: {plan.describe()}", file=sys.stderr)
    # A local Ray started here (and its workers) must die with this process, even when it is
    # killed outright.
    reaper = Reaper() if cluster is not None and cluster.started_here else None
    try:
        store, missing = _locked_run(cfg, spec, url, loc, contexts, plan=plan)
    finally:
        if cluster is not None and cluster.started_here:
            import ray

            ray.shutdown()
        if reaper is not None:
            reaper.close()
    bytes_written = sum(o["size"] for s in missing
                        for k, o in store.commit_record(s)["objects"].items()
                        if k.startswith("activations/"))
    rows = sum(b - a for a, b in map(store.layout.shard_rows_range, missing))
    return GenerateResult(url, False, rows, time.perf_counter() - t0, bytes_written)


def _locked_run(cfg: GenerateConfig, spec: StoreSpec, url: str, loc: Location,
                contexts: pa.Table | None, *, plan: WorkerPlan
                ) -> tuple[ActivationStore, list[int]]:
    """Under the job lock: create or reopen the store, run its missing shards."""
    from actstore.ray_pool import run_shards
    from actstore.shard_pool import run_local

    lock = JobLock(loc, f"gen-{uuid.uuid4().hex[:8]}")
    lock.acquire()
    try:
        store = _create_or_open(cfg, spec, url, contexts, plan.workers)
        for shard in store.shards_missing():  # we hold the job lock: leases are from dead jobs
            break_lease(store, shard)
        missing = store.shards_missing()
        run = run_local if plan.executor == "local" else run_shards
        run(cfg, store, missing, lock.job_id, plan)
    except BaseException as e:
        try:
            lock.release()
        except Exception as r:  # the fault that stopped the run may stop this too
            e.add_note(f"(releasing the job lock failed as well: {type(r).__name__}: {r}; "
                       "it expires by itself)")
        raise
    lock.release()
    return store, missing


def store_url(cfg: GenerateConfig, spec: StoreSpec) -> str:
    """`<out>/<key>`, or `out` itself when it already is a store (whose spec must match)."""
    if read_root_attrs(Location.from_url(cfg.out, cfg.storage_options)) is not None:
        ActivationStore.open(cfg.out, spec, cfg.storage_options)  # SpecMismatchError if not
        return cfg.out
    return f"{cfg.out.rstrip('/')}/{spec.key}"


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


def hook_widths(model: nn.Module, hooks: tuple[str, ...]) -> dict[str, int]:
    """d_model of each hook, from a probe pass of the model's skeleton (meta device: no
    weights, no compute), which also refuses a hook that does not give one row per token."""
    from actstore.capture import Capture

    with Capture(model, hooks) as cap:
        out = cap.run(torch.zeros(1, 2, dtype=torch.long, device="meta"))
    return {h: int(v.shape[-1]) for h, v in out.items()}
