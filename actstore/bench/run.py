"""Run the stages in order on one set of data, with progress on stderr; write bench.json and
bench.md into the out folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from actstore.bench import generation, storage
from actstore.bench.config import BenchConfig, resolve
from actstore.bench.machine import describe
from actstore.bench.report import markdown

#: Entry points that measure the trainer stage (the trainer registers its own, so that actstore
#: does not import it): `measure(store, setup, progress) -> dict`.
STAGE_GROUP = "actstore.bench_stages"


def trainer_stage() -> Any:
    """The installed trainer stage's `measure`."""
    found = [ep for ep in entry_points(group=STAGE_GROUP) if ep.name == "trainer"]
    if not found:
        raise ValueError(f"no trainer stage is installed (entry point group {STAGE_GROUP}): "
                         "reinstall actstore (pip install -e .)")
    return found[0].load()


class Progress:
    """`[bench 12s] what` lines on stderr."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, what: str) -> None:
        print(f"[bench {time.perf_counter() - self.start:5.0f}s] {what}", file=sys.stderr,
              flush=True)


def bench(cfg: BenchConfig) -> dict[str, Any]:
    """Every stage asked for; returns what bench.json holds."""
    setup = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out, prefix="scratch-"))
    progress = Progress()
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": describe(str(out)),
        "config": dataclasses.asdict(cfg), "plan": dataclasses.asdict(setup), "stages": {}}
    stages = result["stages"]
    measure_trainer = trainer_stage() if "trainer" in cfg.stages else None  # before any work
    tokens = None if setup.device == "cuda" else (1 << 14 if cfg.quick else 1 << 16)
    try:
        progress(f"generation: {setup.model} to {setup.hook} on {setup.device} (in this process)")
        gen, store = generation.measure(setup, work, tokens, cfg.seconds / (3 if cfg.quick else 1),
                                        rounds=2 if cfg.quick else 3)
        if "generation" in cfg.stages:
            stages["generation"] = gen
        progress(f"store: {setup.store_rows:,} rows written and read")
        st, tiled = storage.measure_store(store, work, setup.store_rows)
        if "store" in cfg.stages:
            stages["store"] = st
        if "loader" in cfg.stages:
            progress("loader: shuffled epochs, cold and warm")
            stages["loader"] = storage.measure_loader(tiled, setup.train_batch)
        if "trainer" in cfg.stages:
            progress(f"trainer: TopK k={setup.k}, batch {setup.train_batch}, "
                     f"latents {list(setup.latents)}")
            assert measure_trainer is not None
            stages["trainer"] = measure_trainer(tiled, setup, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.perf_counter() - progress.start
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(result))
    progress(f"done: {out / 'bench.md'}, {out / 'bench.json'}")
    return result
