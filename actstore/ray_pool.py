"""Run shards on a pool of Ray actors: one per GPU (or N CPU actors), elastic and idempotent.

Each actor loads the model once and takes shards from the driver's queue, two at a time so one
computes while the other compresses and uploads. When an actor dies (process killed, node
lost), the driver breaks the leases of its in-flight shards, queues them again and starts a
replacement; a shard that keeps killing workers fails the run after `max_retries`.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, NamedTuple

from tqdm import tqdm

from actstore.errors import ShardCommittedError, StoreError
from actstore.store import ActivationStore
from actstore.worker import ShardWorker
from actstore.writer import break_lease, this_process

if TYPE_CHECKING:
    from actstore.generate import GenerateConfig

IN_FLIGHT_PER_WORKER = 2
#: Torch threads per CPU worker by default (workers = cores // this).
DEFAULT_CPU_THREADS = 1
#: Environment a worker needs that a remote cluster does not have: credentials, endpoints,
#: offline switches.
FORWARDED_ENV = ("AWS_", "GOOGLE_", "HF_", "TRANSFORMERS_", "FSSPEC_")


def _runtime_env() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    return {"env_vars": env}


class RayUnavailableError(StoreError):
    """The Ray cluster cannot be reached, or lacks the resources the job asks for."""


def ray_address(cfg: GenerateConfig) -> tuple[str | None, str]:
    """The cluster address and where it came from (an empty RAY_ADDRESS means unset)."""
    if cfg.address:
        return cfg.address, "--address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return (env, "RAY_ADDRESS") if env else (None, "a local Ray started here")


def _probe(address: str, source: str, timeout_s: float) -> None:
    """Fail fast, in one line, when nothing listens at a host:port address (ray.init would
    retry for minutes)."""
    target = address.split("://", 1)[-1]
    if target in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise RayUnavailableError(
                    f"cannot reach the Ray cluster at {address} (from {source}) within "
                    f"{timeout_s:g}s: {e}. Start it (`ray start --head`), fix the address, or "
                    f"leave {source} unset to run on a local Ray") from None
            time.sleep(0.5)


class WorkerPlan(NamedTuple):
    """How many workers run where, decided from the flags and the cluster's resources."""

    device: str
    """cuda (one GPU each) or cpu."""
    workers: int
    """Ray actors started."""
    cpus: float
    """CPUs each reserves in Ray."""
    threads: int
    """Torch threads each runs (CPU workers: their CPUs, so workers x threads = the cores)."""
    cluster_cpus: float
    """CPUs the cluster has."""

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.workers} GPU worker{'s' * (self.workers > 1)}"
        return (f"{self.workers} CPU worker{'s' * (self.workers > 1)} x {self.threads} torch "
                f"thread{'s' * (self.threads > 1)} (Ray has {self.cluster_cpus:g} CPUs)")


def plan_workers(cfg: GenerateConfig, cpus: float, gpus: float) -> WorkerPlan:
    """GPU: one worker per GPU. CPU: workers x threads = the cores Ray has, by default
    `DEFAULT_CPU_THREADS` threads per worker (measured best on CPU, benchmarks/README.md)."""
    from actstore.generate import device_and_dtype

    device, _ = device_and_dtype(cfg)
    if device == "cuda":
        n = cfg.workers or max(1, int(gpus))
        each = cfg.cpus_per_worker or 1.0
        return WorkerPlan(device, n, each, max(1, int(each)), cpus)
    cores = max(1, int(cpus))
    if cfg.workers and cfg.cpus_per_worker:
        n, each = cfg.workers, cfg.cpus_per_worker
    elif cfg.workers:
        n, each = cfg.workers, float(max(1, cores // cfg.workers))
    else:
        each = cfg.cpus_per_worker or float(min(DEFAULT_CPU_THREADS, cores))
        n = max(1, int(cores // each))
    return WorkerPlan(device, n, each, max(1, int(each)), cpus)


class Cluster(NamedTuple):
    """The Ray cluster a job runs on."""

    started_here: bool
    """Ray was started by this process (shut it down after)."""
    plan: WorkerPlan
    """The workers it will run."""


def connect(cfg: GenerateConfig, timeout_s: float = 10.0) -> Cluster:
    """Join the cluster (or start a local Ray), plan the workers and check the cluster has
    what they need, before any lock is taken."""
    import ray

    started_here = not ray.is_initialized()
    address, source = ray_address(cfg)
    if started_here:
        if address:
            _probe(address, source, timeout_s)
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False,
                 runtime_env=_runtime_env())
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    plan = plan_workers(cfg, float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0)))
    need, amount = ("GPU", 1.0) if plan.device == "cuda" else ("CPU", plan.cpus)
    have = float(resources.get(need, 0.0))
    if have < amount:
        if started_here:
            ray.shutdown()
        raise RayUnavailableError(
            f"the Ray cluster ({address or 'local'}, from {source}) has {have:g} {need}, a "
            f"worker needs {amount:g}: add nodes, or lower --cpus-per-worker")
    return Cluster(started_here, plan)


def run_shards(cfg: GenerateConfig, store: ActivationStore, shards: list[int],
               job_id: str, plan: WorkerPlan) -> None:
    """Commit every shard in `shards` on the connected cluster (`connect`); returns when all
    are committed or raises."""
    import ray

    from actstore.generate import device_and_dtype

    if not shards:
        return
    device, dtype = device_and_dtype(cfg)
    actor_cls = ray.remote(ShardWorker).options(
        num_gpus=1 if device == "cuda" else 0, num_cpus=plan.cpus,
        max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0, runtime_env=_runtime_env())

    def start() -> Any:
        return actor_cls.remote(store.url, model=cfg.model, revision=cfg.revision,
                                model_dtype=dtype, device=device, batch_size=cfg.batch_size,
                                job_id=job_id, storage_options=cfg.storage_options,
                                driver=this_process(), threads=plan.threads)

    n_workers = min(plan.workers, len(shards))
    pool = _Pool(store, start, n_workers, cfg.max_retries)
    total = sum(b - a for a, b in map(store.layout.shard_rows_range, shards))
    try:
        with tqdm(total=total, unit="tok", unit_scale=True, disable=not cfg.progress,
                  desc=f"generate {store.key}") as bar:
            pool.run(deque(shards), bar)
    finally:
        pool.shutdown()


#: Errors of cloud SDKs that a later attempt can get past (matched by name, so that neither
#: botocore nor aiohttp has to be installed).
_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ServerDisconnectedError", "ClientOSError",
                    "ClientPayloadError", "ClientConnectorError", "ServerTimeoutError",
                    "ResponseStreamingError", "IncompleteReadError", "TransportError"}
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def transient(e: BaseException) -> bool:
    """True for a fault that may pass (network, server busy), False for one that will not
    (bad data, no space, no permission, a missing bucket)."""
    if isinstance(e, StoreError | PermissionError | FileNotFoundError | IsADirectoryError |
                  NotADirectoryError | FileExistsError):
        return False
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    if {c.__name__ for c in type(e).__mro__} & _TRANSIENT_NAMES:
        return True
    return isinstance(e, OSError) and e.errno not in _FATAL_ERRNOS


class _Pool:
    """The driver's bookkeeping: actors, queue, in-flight shards, retries."""

    def __init__(self, store: ActivationStore, start: Any, n_workers: int,
                 max_retries: int) -> None:
        self.store, self.start, self.max_retries = store, start, max_retries
        self.actors: dict[int, Any] = {i: start() for i in range(n_workers)}
        self.next_id = n_workers
        self.in_flight: dict[Any, tuple[int, int]] = {}
        self.retries: Counter[int] = Counter()

    def run(self, queue: deque[int], bar: tqdm[Any]) -> None:
        import ray

        self.delayed: list[tuple[float, int]] = []  # (when, shard): retries after a backoff
        while True:
            self._release_due(queue)
            for k in list(self.actors):  # a requeued shard goes to whoever has room
                self._feed(k, queue)
            if not (self.in_flight or self.delayed):
                return
            wait = max(0.0, min((t for t, _ in self.delayed), default=60.0) - time.monotonic())
            if not self.in_flight:
                time.sleep(wait)
                continue
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=wait)
            for ref in ready:
                key, shard = self.in_flight.pop(ref)
                try:
                    bar.update(ray.get(ref))
                except ray.exceptions.RayActorError as e:
                    self._worker_died(key, shard, queue, e)
                except ray.exceptions.RayTaskError as e:
                    if isinstance(e.cause, ShardCommittedError):
                        continue
                    if not transient(e.cause):
                        raise e.cause from e  # a real error (bad data, full disk): stop
                    self._retry_later(shard, e.cause)

    def _retry_later(self, shard: int, error: BaseException) -> None:
        """A shard whose write failed on a passing fault (an S3 hiccup) goes again after an
        exponential backoff, up to `max_retries` times."""
        self.retries[shard] += 1
        if self.retries[shard] > self.max_retries:
            error.add_note(f"shard {shard} failed {self.retries[shard]} times; rerun the same "
                           "command to resume")
            raise error
        delay = min(30.0, 2.0 ** (self.retries[shard] - 1))
        print(f"shard {shard}: {type(error).__name__}: {error}; retry "
              f"{self.retries[shard]}/{self.max_retries} in {delay:g}s", file=sys.stderr)
        self.delayed.append((time.monotonic() + delay, shard))

    def _release_due(self, queue: deque[int]) -> None:
        """Queue the delayed shards whose time has come (their writer gave the lease up, but
        its release may itself have failed in the fault: break it)."""
        now = time.monotonic()
        for due in [d for d in self.delayed if d[0] <= now]:
            try:
                break_lease(self.store, due[1])
            except Exception as e:
                if not transient(e):
                    raise
                self._retry_later(due[1], e)
            else:
                queue.appendleft(due[1])
            self.delayed.remove(due)

    def _feed(self, key: int, queue: deque[int]) -> None:
        busy = sum(1 for k, _ in self.in_flight.values() if k == key)
        while queue and busy < IN_FLIGHT_PER_WORKER:
            shard = queue.popleft()
            self.in_flight[self.actors[key].process.remote(shard)] = (key, shard)
            busy += 1

    def _worker_died(self, key: int, shard: int, queue: deque[int], error: Exception) -> None:
        self.retries[shard] += 1
        if self.retries[shard] > self.max_retries:
            raise RuntimeError(f"shard {shard} failed {self.retries[shard]} times: its "
                               f"workers died ({error})") from error
        break_lease(self.store, shard)  # its writer is dead: the shard may be taken again
        queue.appendleft(shard)
        if self.actors.pop(key, None) is not None:  # replace the dead actor once
            self.actors[self.next_id] = self.start()
            self.next_id += 1

    def shutdown(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor)
