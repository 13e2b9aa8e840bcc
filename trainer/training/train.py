"""The training loop: one function for every launcher (plain process, torchrun, Ray Train).

    store ──Loader(dp rank, dp)──▶ (B / dp, d) float32 batches, normalised, on this rank's device
          (dp = world / tp: the tp ranks of a dp row read the same batches and hold slices of
          every dictionary's latents; tp = 1 is plain data parallelism)
          ──Ensemble.step──▶ every dictionary's forward, DDP-averaged backward, constrained step
          ──Meter──▶ metrics.jsonl every `log_every` steps (rank 0), checkpoint every
            `checkpoint_every`, loss recovered with the model spliced (rank 0)
    end: per dictionary dictionaries/<name>/ (cfg.json + model.safetensors), its SAELens
         export in dictionaries/<name>/saelens/ (and sparsify's in sparsify/ for TopK),
         plots/*.png
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from actstore.loader import holdout
from actstore.loader.ground_truth import TOY_MODEL, load_ground_truth
from actstore.loader.loader import Loader, LoaderConfig
from actstore.loader.paired import open_stores
from actstore.store.activation_store import ActivationStore
from actstore.store.errors import StoreError
from actstore.store.format import storage_numpy_dtype
from actstore.store.lock import JobLock
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.dictionary.foreign import start_from
from trainer.dictionary.gather import gathered
from trainer.evaluation.mmcs import recovery
from trainer.evaluation.splicer import Splicer
from trainer.parallel import distributed
from trainer.parallel.distributed import World
from trainer.parallel.mesh import data_parallel, make_mesh
from trainer.tracking import trackers
from trainer.training import checkpoint, run_dir
from trainer.training import memory as plan
from trainer.training.config import TrainConfig
from trainer.training.ensemble import Ensemble, adam, warmup_decay
from trainer.training.logs import MetricsLog, plot_run
from trainer.training.metrics import Meter
from trainer.training.resolve import resolve, summary


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    out: Path
    """The output directory."""
    steps: int
    """Optimiser steps taken in all (including those before a resume)."""
    tokens: int
    """Training rows consumed across ranks, in all (including those before a resume)."""
    tokens_this_run: int
    """Rows consumed by this process's run (all of them unless it resumed)."""
    seconds: float
    """Wall time of this process's run."""
    dictionaries: tuple[Path, ...]
    """One directory per trained dictionary (written by rank 0)."""
    final: tuple[dict[str, float], ...]
    """Each dictionary's last logged metrics (and loss recovered when evaluated)."""


def member_name(cfg: DictionaryConfig) -> str:
    knob = {"relu": f"l1-{cfg.l1:g}", "jumprelu": f"l0-{cfg.l0:g}"}.get(cfg.arch, f"k{cfg.k}")
    return f"{cfg.arch}-n{cfg.latents}-{knob}"


def check_against(cfg: TrainConfig, store: ActivationStore, world: World) -> None:
    """Checks that need the store and the world size, before any work."""
    dp = data_parallel(world.size, cfg.tp)
    for flag, hooks in (("--hook", cfg.sites), ("--target-hook", cfg.target_hook)):
        for hook in hooks:
            if hook not in store.layout.d_model:
                raise ValueError(f"{flag} {hook!r} is not in store {store.url}; it has "
                                 f"{list(store.hooks)}")
        widths = {store.layout.d_model[h] for h in hooks}
        if len(widths) > 1 and cfg.kind == "clt":  # a crosscoder's sites may differ
            raise ValueError(f"a CLT's {flag} hooks must share one width, got "
                             f"{ {h: store.layout.d_model[h] for h in hooks} }")
    store.require_complete()
    if cfg.batch_size % dp:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide evenly over "
                         f"{dp} data-parallel ranks")
    if store.num_rows // dp < cfg.batch_size // dp:
        raise ValueError(f"store {store.url} has {store.num_rows} rows: fewer than one batch "
                         f"of {cfg.batch_size // dp} per data-parallel rank")


def widths(cfg: TrainConfig, store: ActivationStore) -> tuple[int, int | None, tuple[int, ...]]:
    """The width of the inputs (a crosscoder's: its sites' together), of the targets (None:
    an SAE's, its input's), and a crosscoder's sites' widths in order (() for the others)."""
    if cfg.kind == "crosscoder":
        sites = tuple(store.layout.d_model[h] for h in cfg.sites)
        return sum(sites), None, sites
    d_model = store.layout.d_model[cfg.hook[0]]
    return d_model, store.layout.d_model[cfg.target_hook[0]] if cfg.target_hook else None, ()


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg`'s dictionaries; call it on every rank."""
    world = distributed.setup(cfg.device)
    try:
        with run_dir.out_of_space(cfg.out):
            return _Run(cfg, world).run()
    finally:
        distributed.teardown(world)


class _Run:
    """State of one run on one rank."""

    def __init__(self, given: TrainConfig, world: World) -> None:
        self.world = world
        self.store = open_stores(given.store)
        check_against(given, self.store, world)
        # the run, and its checkpoint, use every default resolved (--tokens needs the store)
        cfg, rows = resolve(given, self.store)
        self.cfg, self.summary = cfg, summary(given, cfg, rows)
        d_model, d_out, sites = widths(cfg, self.store)
        self.members = cfg.dictionaries(d_model, d_out, sites)
        self.mesh = make_mesh(world, cfg.tp)
        dtype = self.store.spec.dtype
        problem = plan.fit_problem(cfg, d_model, storage_numpy_dtype(dtype).itemsize,
                                   self.mesh.dp, world.device, d_out=d_out, sites=sites,
                                   scale_bytes=plan.scale_bytes_of(dtype))
        if problem:
            raise ValueError(f"this run does not fit in memory: {problem}")
        self.steps = cfg.steps
        per_rank = cfg.batch_size // self.mesh.dp
        self.part = holdout.partition(self.store, cfg.holdout)
        self.loader = Loader(LoaderConfig(
            hooks=cfg.hooks, batch_size=per_rank, seed=cfg.seed, drop_last=True,
            shuffle_buffer=max(per_rank, cfg.shuffle_buffer - cfg.shuffle_buffer % per_rank),
            read_threads=cfg.read_threads, device=str(world.device), dtype="float32",
            normalize=cfg.normalize,
            shards=self.part.train_shards), store=self.store, rank=self.mesh.dp_rank,
            world_size=self.mesh.dp)
        # each hook's statistics, read once; what the dictionaries reconstruct: a
        # transcoder's or CLT's targets, an SAE's own input
        self.norms = [self.loader.normalizer(h) for h in cfg.sites]
        self.target_norms = [self.loader.normalizer(h) for h in cfg.targets]
        self.norm, self.target_norm = self.norms[0], self.target_norms[0]
        trackers.require(cfg.log)  # a missing library stops every rank before any work
        self.ensemble = Ensemble(self.members, adam(cfg.lr_of), seed=cfg.seed,
                                 grad_clip=cfg.grad_clip,
                                 schedule=warmup_decay(self.steps, cfg.warmup,
                                                       cfg.decay_start),
                                 kernel=cfg.kernel, mesh=self.mesh).to(world.device)
        if cfg.init_from and not cfg.resume:  # a shape that does not fit stops before any work
            start_from(cfg.init_from, self.ensemble.members, self.norm)
        self.meter = Meter(self.ensemble.members, world.device, self.mesh)
        self.names = [member_name(m) for m in self.members]
        self.log = MetricsLog(Path(cfg.out), self.names, enabled=world.is_main)
        self.step = 0
        # a toy store has no model to splice into (its ground truth gives MMCS instead); a
        # crosscoder's sites are not spliced (yet)
        has_model = self.store.spec.model != TOY_MODEL and cfg.kind != "crosscoder"
        self.splicer = self._splicer() if cfg.eval_contexts and has_model else None

    def _splicer(self) -> Splicer | None:
        """The model for loss recovered, loaded at the start on the ranks of dp row 0 (rank 0,
        or under latent sharding every tp rank there, since each holds a slice of the
        dictionaries), so a model that cannot be loaded stops every rank before training
        rather than at the end."""
        error, splicer = None, None
        if self.mesh.dp_rank == 0:
            try:
                first = holdout.first_held_out_context(self.store, self.part)
                cfg = self.cfg
                sources = list(zip(cfg.hook, self.norms, strict=True))
                # a CLT's later layers are replaced at once (its replacement model)
                later = [(t, tn, src) for t, tn, src in zip(
                    cfg.targets, self.target_norms, sources, strict=True)][1:]
                splicer = Splicer(self.store, cfg.targets[0], self.target_norm,
                                  cfg.eval_contexts, self.world.device, first_context=first,
                                  source=sources[0] if cfg.target_hook else None, layers=later)
            except Exception as e:  # reported on every rank below
                error = f"{type(e).__name__}: {e}"
        error = next((e for e in distributed.gather_objects(error) if e), None)
        if error:
            raise ValueError(f"loss recovered needs the store's model ({self.store.spec.model})"
                             f", which failed to load: {error}; pass --eval-contexts 0 to "
                             "train without it")
        return splicer

    def run(self) -> TrainResult:
        start = time.perf_counter()
        lock = self._claim()
        try:
            self._announce()
            if self.cfg.resume:
                self._restore()
            else:
                self._init_bias()
            first = self.step
            self.log.open(resume_at=self.step)
            if self.world.is_main and self.cfg.log:
                self.log.trackers = trackers.open_trackers(
                    self.cfg.log, Path(self.cfg.out), self._tracker_config(), self.step,
                    wandb_project=self.cfg.wandb_project, wandb_entity=self.cfg.wandb_entity,
                    wandb_name=self.cfg.wandb_name)
            try:
                if self.world.distributed:
                    self.ensemble.distribute(self.world.device)
                final = self._finish(self._loop())
            finally:
                self.log.close()
        finally:
            if lock is not None:
                lock.release()
        return TrainResult(Path(self.cfg.out), self.step, self.step * self.cfg.batch_size,
                           (self.step - first) * self.cfg.batch_size,
                           time.perf_counter() - start, final[0], final[1])

    def _announce(self) -> None:
        """Rank 0's first lines, once every check has passed: the defaults the run took (with
        the progress bar, as generate says where it runs), and a schedule that never peaks."""
        if self.world.is_main:
            if self.cfg.progress:
                print(self.summary, file=sys.stderr)
            if warning := self.cfg.schedule_warning():
                print(f"actstore train: warning: {warning}", file=sys.stderr)

    def _claim(self) -> JobLock | None:
        """Rank 0 locks the run folder; a refusal stops every rank."""
        error, lock = None, None
        if self.world.is_main:
            try:
                lock = run_dir.claim(self.cfg)
            except (StoreError, ValueError, FileNotFoundError) as e:
                error = e
        error = distributed.broadcast_object(error)
        if error is not None:
            raise error
        return lock

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """(input, a transcoder's target or None) batches, epoch after epoch."""
        cfg = self.cfg
        while True:  # epochs, from the loader's current position
            for batch in self.loader:
                if cfg.kind == "clt":  # (B, L, d): layer by layer
                    yield (torch.stack([batch.x[h] for h in cfg.hook], 1),
                           torch.stack([batch.x[h] for h in cfg.target_hook], 1))
                elif cfg.kind == "crosscoder":  # (B, Σd): the sites side by side
                    yield torch.cat([batch.x[h] for h in cfg.sites], 1), None
                else:
                    yield (batch.x[cfg.hook[0]],
                           batch.x[cfg.target_hook[0]] if cfg.target_hook else None)

    def _loop(self) -> list[dict[str, float]]:
        cfg = self.cfg
        last: list[dict[str, float]] = [{} for _ in self.members]
        autocast = cfg.autocast and self.world.device.type == "cuda"
        batches = self._batches()
        bar = tqdm(total=self.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.world.is_main))
        log_every, checkpoint_every = cfg.intervals
        with bar:
            while self.step < self.steps:
                x, y = next(batches)
                self.meter.add(x if y is None else y, self.ensemble.step(x, autocast, y))
                self.step += 1
                bar.update(1)
                if self.step % log_every == 0 or self.step == self.steps:
                    last = self.meter.flush()
                    self.log.write(self.step, self.step * cfg.batch_size, self._lr(), last)
                    bar.set_postfix(fvu=f"{last[0]['fvu']:.3f}", l0=f"{last[0]['l0']:.1f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.steps:
                    self._evaluate()
                if self.step % checkpoint_every == 0 or self.step == self.steps:
                    self._save()
        return last

    def _lr(self) -> float:
        return float(self.ensemble.optimizers[0].param_groups[0]["lr"])

    def _evaluate(self) -> list[dict[str, float]]:
        results: list[dict[str, float]] = []
        if self.splicer is not None:
            results = self.splicer.evaluate(self.ensemble.members)
            self.log.write_eval(self.step, results)
        distributed.barrier()
        return results

    @torch.no_grad()
    def _init_bias(self) -> None:
        """b_dec at a centre of a sample of the target (an SAE's input) spread over the
        training shards (the same rows on every rank; the training shards are the store's
        first rows)."""
        if self.cfg.bias_init == "zeros" or self.cfg.init_from:  # --init-from brings b_dec
            return
        n, spots = self.store.layout.shard_rows_range(self.part.train[-1])[1], 16
        each = max(1, min(self.cfg.init_rows, n) // spots)
        starts = sorted({i * n // spots for i in range(spots)})
        samples = [norm.apply(torch.cat([self.store.read_torch(hook, a, min(a + each, n))
                                         for a in starts]).float())
                   for hook, norm in zip(self.cfg.targets, self.target_norms, strict=True)]
        # a CLT's targets side by side, (rows, L, d_out); a crosscoder's sites, (rows, Σd)
        kind = self.cfg.kind
        sample = (torch.stack(samples, 1) if kind == "clt" else torch.cat(samples, 1)
                  if kind == "crosscoder" else samples[0]).to(self.world.device)
        for m in self.ensemble.members:
            m.init_bias(sample, self.cfg.bias_init)

    def _save(self) -> None:
        loaders = distributed.gather_objects(self.loader.state_dict())
        ensemble = self.ensemble
        checkpoint.save(self.cfg.out, ensemble, self.meter, self.mesh, {
            "step": self.step, "config": self.cfg.to_dict(),
            "dictionaries": [dataclasses.asdict(m) for m in self.members],
            "schedulers": [s.state_dict() for s in ensemble.schedulers],
            "lrs": [[g["lr"] for g in o.param_groups] for o in ensemble.optimizers],
            "loaders": loaders[::self.mesh.tp],  # one per dp row (its tp ranks read alike)
            "meter_tokens": self.meter.tokens_total,
            "rng": distributed.broadcast_object(checkpoint.rng_state())})

    def _restore(self) -> None:
        state = checkpoint.load_meta(self.cfg.out, self.cfg, self.members,
                                     finished=run_dir.finished(self.cfg.out))
        if len(state["loaders"]) != self.mesh.dp:
            raise ValueError(f"--resume: the checkpoint was written with {len(state['loaders'])}"
                             f" data-parallel ranks, this run has {self.mesh.dp}; resume with "
                             "the same number of ranks / --tp (the batches would differ)")
        checkpoint.load_tensors(self.cfg.out, self.ensemble, self.meter, self.mesh)
        self.loader.load_state_dict(state["loaders"][self.mesh.dp_rank])
        for sched, saved in zip(self.ensemble.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(saved)
        for opt, lrs in zip(self.ensemble.optimizers, state["lrs"], strict=True):
            for group, lr in zip(opt.param_groups, lrs, strict=True):
                group["lr"] = lr
        self.meter.tokens_total = int(state["meter_tokens"])
        checkpoint.set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _finish(self, last: list[dict[str, float]]
                ) -> tuple[tuple[Path, ...], tuple[dict[str, float], ...]]:

        evals = self._evaluate() if self.cfg.eval_contexts else []  # every rank: it barriers
        densities = self.meter.densities()
        whole = [gathered(m) for m in self.ensemble.members]  # sharded: on tp rank 0
        truth = load_ground_truth(self.store)  # toy stores: recovery of the known features
        final = tuple({**m, **(evals[i] if evals else {}),
                       **(recovery(truth, w.W_dec.detach()) if truth is not None and w is not None
                          else {})}
                      for i, (m, w) in enumerate(zip(last, whole, strict=True)))
        dirs = tuple(Path(self.cfg.out) / "dictionaries" / n for n in self.names)
        if self.world.is_main:
            source = run_dir.source(self.cfg, self.store, self.step)
            for d, member, dens in zip(dirs, whole, densities, strict=True):
                assert member is not None  # rank 0 is tp rank 0 of dp row 0
                run_dir.save_formats(d, member, source, self.norms, self.target_norms)
                torch.save(dens, d / "latent_density.pt")
            if self.cfg.plots:
                self.log.images(self.step, plot_run(Path(self.cfg.out), self.names, densities))
            run_dir.mark_finished(self.cfg.out)
        distributed.barrier()
        return dirs, final

    def _tracker_config(self) -> dict[str, Any]:
        """The run's settings and the store it reads, as a tracker's run config."""
        return {"train": self.cfg.to_dict(), "store": {
            "url": self.store.url, "key": self.store.key,
            **dataclasses.asdict(self.store.spec)}}
