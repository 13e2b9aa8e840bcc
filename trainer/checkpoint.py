"""Checkpoints: everything a resumed run needs to replay an uninterrupted one step for step.

`out/checkpoint.pt` holds the step, the ensemble (parameters, buffers, optimisers,
schedulers), every rank's loader position, the run-long metric state and the RNG states. It
is written by rank 0 to a temporary file and renamed, so a run killed mid-write keeps the
previous checkpoint. Checkpoints fall on logging steps, so no interval sums are lost.
"""

from __future__ import annotations

import dataclasses
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import KNOB, TrainConfig
from trainer.dictionaries import DictionaryConfig

VERSION = 1
#: Settings a resumed run may change: they do not alter the numbers.
FREE_SETTINGS = {"resume", "overwrite", "progress", "plots", "read_threads", "eval_every",
                 "eval_contexts"}


def path(out: str | Path) -> Path:
    return Path(out) / "checkpoint.pt"


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


def save(out: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename). Streamed to the file rather than
    built in memory for `Location.put`: with optimiser state a checkpoint can be GBs."""
    target = path(out)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")  # never another run's
    with open(tmp, "wb") as f:
        torch.save({"version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def load(out: str | Path, cfg: TrainConfig, members: list[DictionaryConfig]) -> dict[str, Any]:
    """The checkpoint in `out`, after checking it belongs to this run."""
    target = path(out)
    if not target.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {target}")
    state: dict[str, Any] = torch.load(target, map_location="cpu", weights_only=False)
    if state.get("version") != VERSION:
        raise ValueError(f"{target}: checkpoint version {state.get('version')} is not {VERSION}")
    _check_dictionaries(state["dictionaries"], [dataclasses.asdict(m) for m in members])
    saved = state["config"]
    changed = {k: (saved.get(k), v) for k, v in cfg.to_dict().items()
               if k not in FREE_SETTINGS and saved.get(k) != v}
    if changed:
        raise ValueError(f"--resume: settings differ from the checkpoint's (saved, now): "
                         f"{changed}; resume with the same settings")
    steps = cfg.steps
    if int(state["step"]) >= steps:
        raise ValueError(f"--resume: the run in {out} is finished ({state['step']} of {steps} "
                         f"steps); its dictionaries are in {Path(out) / 'dictionaries'}. To "
                         "train further, start a new run from them or with more --tokens in "
                         "another --out")
    return state



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
