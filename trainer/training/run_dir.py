"""The run folder (`--out`): one run at a time, never mixed with another run's files.

Rank 0 takes the folder's lock (the store's `JobLock`: a lease renewed by a heartbeat, taken
over at once when its holder is dead) for the whole run, so a second `actstore train` into the
same folder is refused instead of interleaving its metrics and dictionaries with the first's.
A folder that already holds files is refused unless the run resumes its checkpoint or
`--overwrite` asks for a fresh start (then only this trainer's own files are removed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actstore.loader.delivery import Normalizer
from actstore.loader.paired import PairedStore
from actstore.store import format as fmt
from actstore.store.activation_store import ActivationStore
from actstore.store.errors import full_disk
from actstore.store.location import Location
from actstore.store.lock import JobLock
from trainer.dictionary.clt import CrossLayerTranscoder
from trainer.dictionary.clt_export import export_circuit_tracer_clt, save_clt
from trainer.dictionary.dictionaries import SparseDictionary
from trainer.dictionary.export import (
    CIRCUIT_TRACER_ARCHS,
    export_saelens,
    export_sparsify,
    save_crosscoder,
    save_dictionary,
)
from trainer.training import checkpoint
from trainer.training.config import TrainConfig

#: What a run writes into its folder (all of it is replaced by --overwrite).
DONE = ".finished"
"""Written after every dictionary, export and plot of a run: a run whose last checkpoint is
final but which lacks it (the disk filled while they were written) resumes to write them."""
ARTIFACTS = ("metrics.jsonl", "dictionaries", "plots", checkpoint.path("").name, DONE,
             "checkpoint.pt")  # the last: an older version's checkpoint file


def finished(out: str | Path) -> bool:
    return (Path(out) / DONE).exists()


def mark_finished(out: str | Path) -> None:
    (Path(out) / DONE).write_text("")


@contextlib.contextmanager
def out_of_space(out: str | Path) -> Iterator[None]:
    """A full disk (or quota) while the run folder is written: one error that says what
    survives and how to go on, instead of a traceback from deep inside a writer."""
    def then(what: str) -> str:
        kept = checkpoint.found(out)
        go_on = (f"its last checkpoint ({kept}) is intact: free space and rerun with --resume"
                 if kept is not None else "nothing was checkpointed yet: free space and rerun "
                 "with --overwrite")
        return f"--out {out}: no space left on the device ({what}); {go_on}"
    with full_disk(then, out):
        yield


def prepare(out: Path) -> None:
    """Create `out`, or explain in one line why it cannot be a run folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: pass a folder for the run")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be created: {e.strerror}") from None
    probe = out / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} is not writable: {e.strerror}") from None


def claim(cfg: TrainConfig) -> JobLock:
    """Lock the run folder and make sure it holds nothing another run would mix with."""
    out = Path(cfg.out)
    prepare(out)
    lock = JobLock(Location.from_url(str(out)), f"train-{uuid.uuid4().hex[:8]}",
                   what="run folder")
    lock.acquire()
    try:
        _check_contents(cfg, out)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_contents(cfg: TrainConfig, out: Path) -> None:
    present = sorted(p.name for p in out.iterdir() if p.name != fmt.LOCK)
    has_checkpoint = checkpoint.found(out) is not None
    if cfg.resume:
        if not has_checkpoint:
            checkpoint.load_meta(out, cfg, [])  # raises, saying why
        return
    if not present:
        return
    if not cfg.overwrite:
        what = "a checkpoint: pass --resume to continue it, " if has_checkpoint else \
            f"files of another run ({', '.join(present[:5])}): pass "
        raise ValueError(f"--out {out} holds {what}--overwrite to start over there, or "
                         "another --out")
    for name in ARTIFACTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            os.unlink(path)


def save_formats(d: Path, member: SparseDictionary, source: dict[str, Any],
                 norms: list[Normalizer], target_norms: list[Normalizer]) -> None:
    """A trained dictionary into its folder `d`: ours, and each peer's format that can hold
    it (`norms`, `target_norms`: the normalisers of the sites it reads and writes)."""
    cfg = member.cfg
    if isinstance(member, CrossLayerTranscoder):
        save_clt(d, member, norms, target_norms, source)
        if cfg.arch in CIRCUIT_TRACER_ARCHS and cfg.out_width == cfg.d_model:
            export_circuit_tracer_clt(d / "circuit_tracer", member, norms, target_norms,
                                      model_name=source["model"])
        return
    if cfg.kind == "crosscoder":  # no peer has a crosscoder format
        save_crosscoder(d, member, norms, source)
        return
    target = target_norms[0] if cfg.kind == "transcoder" else None
    save_dictionary(d, member, norms[0], source, target)
    if not (cfg.kind == "transcoder" and cfg.arch == "topk"):
        export_saelens(d / "saelens", member, norms[0], source, target)
    if cfg.arch == "topk" and cfg.out_width == cfg.d_model:
        export_sparsify(d / "sparsify", member, norms[0], target)


def source(cfg: TrainConfig, store: ActivationStore | PairedStore, step: int) -> dict[str, Any]:
    """What produced a run's dictionaries, saved beside each: the store(s), hooks, model,
    corpus and the run's settings."""
    spec = store.spec
    # one hook by name (as runs before CLTs wrote it), a CLT's as lists in layer order
    hooks: dict[str, Any] = ({"hook": list(cfg.hook), "target_hook": list(cfg.target_hook)}
                             if cfg.kind == "clt" else {"hook": list(cfg.sites)}
                             if cfg.kind == "crosscoder" else {"hook": cfg.hook[0]})
    if cfg.kind == "transcoder":
        hooks["target_hook"] = cfg.target_hook[0]
    urls = store.urls if isinstance(store, PairedStore) else store.url
    return {"store": urls, "store_key": store.key, **hooks,
            "model": spec.model, "model_revision": spec.model_revision,
            "dataset": spec.dataset, "context_length": spec.context_length,
            "bos_policy": spec.bos_policy, "tokens_trained": step * cfg.batch_size,
            "train_config": cfg.to_dict()}
