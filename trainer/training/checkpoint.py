"""Checkpoints: everything a resumed run needs to replay an uninterrupted one step for step.

`out/checkpoint/` is a torch.distributed.checkpoint (DCP) directory written by every rank:

    m{i}.<parameter or buffer>        member i's tensors (W_enc as its latent-major transpose)
    m{i}.adam.<parameter>.<moment>    Adam's exp_avg, exp_avg_sq and step
    m{i}.fired                        the run-long firing counts (latent densities)
    meta                              step, settings, dictionaries, schedulers, learning rates,
                                      every dp rank's loader position, RNG states (one blob)

Under latent sharding (tp > 1) the per-latent tensors are DTensors sharded along the latents
over the mesh's tp dimension and replicated over dp, so each rank writes its own slice and DCP
reshards on load: a checkpoint written at one tp resumes at any other (the dp size, which fixes
the loader's order, must stay). It is written to a temporary directory and swapped in, so a run
killed mid-write keeps the previous checkpoint. Checkpoints fall on logging steps, so no
interval sums are lost.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import math
import os
import random
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.tensor import DTensor, Replicate, Shard

from actstore.store.errors import interrupted
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.gather import sharded_dim
from trainer.parallel import distributed
from trainer.parallel.mesh import Mesh
from trainer.training.config import KNOB, TrainConfig
from trainer.training.ensemble import Ensemble
from trainer.training.metrics import Meter

VERSION = 2
#: What a jumprelu checkpoint written before these flags existed trained with (the old
#: defaults), so that it resumes only with them (`--jump-init-threshold 0.001
#: --jump-bandwidth 0.001`), never silently under the new ones.
BEFORE_JUMP_FLAGS = {"jump_init_threshold": 1e-3, "jump_bandwidth": 1e-3}
#: Settings a resumed run may change: they do not alter the numbers.
FREE_SETTINGS = {"resume", "overwrite", "progress", "plots", "read_threads", "eval_every",
                 "eval_contexts", "kernel", "tp", "out", "log", "wandb_project", "wandb_entity",
                 "wandb_name"}  # out: a moved run folder resumes


def path(out: str | Path) -> Path:
    return Path(out) / "checkpoint"


def _previous(out: str | Path) -> Path:
    """Where the last checkpoint sits while a new one is swapped in."""
    return Path(out) / ".checkpoint.previous"


def found(out: str | Path) -> Path | None:
    """The checkpoint directory of `out`, if any (also mid-swap)."""
    return next((p for p in (path(out), _previous(out)) if p.is_dir()), None)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _blob(value: dict[str, Any]) -> io.BytesIO:
    """The non-tensor state as one pickled blob (DCP stores bytes as they are)."""
    out = io.BytesIO()
    torch.save(value, out)
    out.seek(0)
    return out


def _unblob(loaded: Any) -> dict[str, Any]:
    """What DCP put back for a blob: the bytes (torch 2.13), or already the unpickled value."""
    if isinstance(loaded, io.BytesIO):
        loaded.seek(0)
        value: dict[str, Any] = torch.load(loaded, weights_only=False)
        return value
    return dict(loaded)


@contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns whenever it runs without a process group, which one process does by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _as_saved(key: str, t: torch.Tensor, member: SparseDictionary, mesh: Mesh | None
              ) -> torch.Tensor:
    """A tensor as the checkpoint holds it: latent-major (W_enc transposed, a view), and a
    DTensor over the mesh when its latents are sharded."""
    view = t.t() if key.split(".", maxsplit=1)[0] in ("W_enc", "W_encs") else t
    if mesh is None or mesh.tp == 1 or sharded_dim(key) is None:
        return view
    shape = torch.Size((member.cfg.latents, *view.shape[1:]))
    stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))  # contiguous
    return DTensor.from_local(view, mesh.device_mesh, [Replicate(), Shard(0)], run_check=False,
                              shape=shape, stride=stride)


def _ensure_adam_state(ensemble: Ensemble) -> None:
    """Empty Adam state where a step has not made it yet (a load fills it in place)."""
    for opt in ensemble.optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if not opt.state.get(p):
                    opt.state[p] = {"step": torch.zeros((), device=p.device),
                                    "exp_avg": torch.zeros_like(p),
                                    "exp_avg_sq": torch.zeros_like(p)}


def tensors(ensemble: Ensemble, meter: Meter, mesh: Mesh | None) -> dict[str, Any]:
    """The checkpoint's tensors, sharing storage with the run's (so a load fills the run)."""
    out: dict[str, Any] = {}
    for i, (m, opt) in enumerate(zip(ensemble.members, ensemble.optimizers, strict=True)):
        for key, t in m.state_dict().items():
            out[f"m{i}.{key}"] = _as_saved(key, t, m, mesh)
        for name, p in m.named_parameters():
            state = opt.state[p]
            for moment in ("exp_avg", "exp_avg_sq"):
                out[f"m{i}.adam.{name}.{moment}"] = _as_saved(name, state[moment], m, mesh)
            out[f"m{i}.adam.{name}.step"] = state["step"]
        out[f"m{i}.fired"] = _as_saved("tokens_since_fired", meter.fired[i], m, mesh)
    return out


def save(out: str | Path, ensemble: Ensemble, meter: Meter, mesh: Mesh | None,
         meta: dict[str, Any]) -> None:
    """Every rank: write its share into a new directory, then rank 0 swaps it in."""
    target = path(out)
    tmp = Path(distributed.broadcast_object(
        str(target.with_name(f".checkpoint.{uuid.uuid4().hex}.tmp"))))  # never another run's
    state = tensors(ensemble, meter, mesh)
    try:
        with _single_process_ok():
            dcp_save({**state, "meta": _blob({"version": VERSION, **meta})},
                     checkpoint_id=str(tmp), no_dist=distributed.world_size() == 1)
    except BaseException as e:
        # torch.save's zip writer reports a full disk without its errno: judge by the space
        # left, before the half-written checkpoint is removed (the last one stays intact)
        needed = sum(t.numel() * t.element_size() for t in state.values()
                     if isinstance(t, torch.Tensor))
        full = _free(target.parent) < needed
        shutil.rmtree(tmp, ignore_errors=True)
        if _interrupted(e):  # Ctrl-C inside DCP's writer comes back as DCP's own error
            raise KeyboardInterrupt from e
        if full and not isinstance(e, SystemExit):  # dcp's own error is a BaseException
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp)) from e
        raise
    try:
        distributed.barrier()
        if distributed.rank() == 0:
            _swap(tmp, out)
        distributed.barrier()
    finally:  # a swap cut short leaves no stray copy behind
        shutil.rmtree(tmp, ignore_errors=True)


def _interrupted(e: BaseException) -> bool:
    """Ctrl-C, also as one rank's failure inside DCP's CheckpointException."""
    failures = e.failures.values() if isinstance(e, CheckpointException) else ()
    return interrupted(e) or any(interrupted(error) for error, _ in failures)


def _swap(tmp: Path, out: str | Path) -> None:
    """Put `tmp` in place of the last checkpoint, so that at every moment `found` returns a
    complete one: `checkpoint/`, else `.checkpoint.previous/` (only ever removed while
    `checkpoint/` is in place)."""
    target, previous = path(out), _previous(out)
    if target.exists():  # else a swap was cut short and previous is the last checkpoint
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(tmp, target)
    shutil.rmtree(previous, ignore_errors=True)


def _free(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def load_meta(out: str | Path, cfg: TrainConfig, members: list[DictionaryConfig],
              finished: bool = True) -> dict[str, Any]:
    """The checkpoint's step, settings and positions, after checking it belongs to this run.
    A final checkpoint is refused when the run `finished` (wrote its dictionaries)."""
    where = found(out)
    if where is None:
        legacy = Path(out) / "checkpoint.pt"
        raise FileNotFoundError(f"--resume: no checkpoint in {out}" + (
            f" ({legacy} was written by an older actstore and cannot be resumed)"
            if legacy.exists() else ""))
    holder: dict[str, Any] = {"meta": io.BytesIO()}
    with _single_process_ok():
        dcp_load(holder, checkpoint_id=str(where), no_dist=distributed.world_size() == 1)
    state = _unblob(holder["meta"])
    if state.get("version") != VERSION:
        raise ValueError(f"{where}: checkpoint version {state.get('version')} is not {VERSION}")
    # settings added since a checkpoint was written read as their defaults
    defaults = {f.name: f.default for f in dataclasses.fields(DictionaryConfig)}
    _check_dictionaries([_used({**defaults, **d}) for d in state["dictionaries"]],
                        [_used(dataclasses.asdict(m)) for m in members])
    saved = {**{f.name: f.default for f in dataclasses.fields(type(cfg))
                if f.default is not dataclasses.MISSING},
             **(BEFORE_JUMP_FLAGS if state["config"].get("arch") == "jumprelu" else {}),
             **state["config"]}
    for name in ("store", "hook", "target_hook"):  # one as a string before they were tuples
        if isinstance(saved.get(name), str):
            saved[name] = (saved[name],)
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items()
               if k not in FREE_SETTINGS and saved.get(k) != v}
    if changed:
        raise ValueError(f"--resume: settings differ from the checkpoint's (saved, now): "
                         f"{changed}; resume with the same settings")
    steps = cfg.steps
    if int(state["step"]) >= steps and finished:
        raise ValueError(f"--resume: the run in {out} is finished ({state['step']} of {steps} "
                         f"steps); its dictionaries are in {Path(out) / 'dictionaries'}. To "
                         "train further, start a new run from them or with more --tokens in "
                         "another --out")
    return state


def load_tensors(out: str | Path, ensemble: Ensemble, meter: Meter, mesh: Mesh | None) -> None:
    """Fill the run's parameters, buffers, Adam state and firing counts from the checkpoint,
    resharded to this run's tp."""
    where = found(out)
    assert where is not None  # load_meta checked
    _ensure_adam_state(ensemble)
    with _single_process_ok():
        dcp_load(tensors(ensemble, meter, mesh), checkpoint_id=str(where),
                 no_dist=distributed.world_size() == 1)


def _used(member: dict[str, Any]) -> dict[str, Any]:
    """A dictionary's settings but jumprelu's own for another architecture: they mean nothing
    there, and their defaults changed (a TopK checkpoint from before still resumes)."""
    return {k: v for k, v in member.items()
            if member["arch"] == "jumprelu" or not k.startswith("jump_")}


def _check_dictionaries(saved: list[dict[str, Any]], now: list[dict[str, Any]]) -> None:
    """Refuse a resume whose sweep is not the checkpoint's, naming what differs."""
    if saved == now:
        return
    if len(saved) != len(now):
        raise ValueError(f"--resume: the checkpoint holds {len(saved)} dictionaries "
                         f"({_names(saved)}), this run asks for {len(now)} ({_names(now)}); "
                         "resume with the same sweep")
    diffs = [f"#{i} {k}: saved {a[k]!r}, now {b.get(k)!r}" for i, (a, b) in
             enumerate(zip(saved, now, strict=True)) for k in a if a[k] != b.get(k)]
    raise ValueError(f"--resume: the checkpoint's dictionaries differ ({'; '.join(diffs)}); "
                     "this run cannot continue that one")


def _names(members: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['arch']} n={m['latents']} {KNOB[m['arch']]}={m[KNOB[m['arch']]]}"
                     for m in members)
