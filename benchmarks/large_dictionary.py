"""Very large dictionaries: the dense and the sparse TopK step side by side, and the memory
model against the measured peak, in one run.

    python -m benchmarks.large_dictionary [--latents 65536 262144] [--device cuda] [--largest]

TopK, d_model=768, k=32, global batch 4096 by default, one full training step each (forward,
backward with AuxK, decoder constraint, gradient clipping, fused Adam): `Ensemble.step`, what
`actstore train` runs. A tenth of the latents, spread evenly, are dead at every step so AuxK
does its work in both steps. Each (latents, kernel) runs in its own subprocess, so its peak
memory is its own: on CPU the resident-set high-water mark of the steps (reset after the
dictionary is built, less the process's size before it), on CUDA max_memory_allocated. A
dense step the memory model says cannot fit runs at a smaller batch (tokens/s is per token,
so the ratio stays fair; the table says which batch ran). `--largest` (CUDA) then trains the
largest dictionary the model says fits on this device, and prints the model's largest for 8
devices with tp=8.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import torch

from actstore.bench.io import reset_peak, rss_bytes
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.ensemble import Ensemble, adam
from trainer.training.memory import available_bytes, dictionary_memory, gib

Step = typing.Literal["dense", "sparse"]


def device_bytes(device: str) -> int:
    """Memory the step may use on `device` (the memory model's own reading of it)."""
    free = available_bytes(torch.device(device))
    if free is None:
        raise RuntimeError(f"cannot tell the free memory of {device} here")
    return free


def child(a: argparse.Namespace) -> dict[str, Any]:
    """One (latents, kernel, batch): seconds per step and the peak memory of the steps."""
    device = torch.device(a.device)
    base = rss_bytes("VmRSS") if device.type == "cpu" else 0
    kind: dict[str, Any] = ({"kind": "clt"} if a.clt else
                            {"kind": "transcoder"} if a.transcoder else {})
    cfg = DictionaryConfig(arch="topk", d_model=a.d, latents=a.child_latents, k=a.k,
                           dead_after_tokens=a.batch, **kind, **shape(a))
    ens = Ensemble([cfg], adam(1e-4), kernel=a.child_kernel).to(device)
    sae = ens.members[0]
    layers = (a.clt,) if a.clt else ()  # a CLT's batch: (B, L, d), every layer's input
    x = torch.randn(a.batch, *layers, a.d, device=device)
    y = (torch.randn(a.batch, *layers, a.d_out or a.d, device=device)
         if a.transcoder or a.clt else None)
    every = max(1, round(1 / a.dead_fraction)) if a.dead_fraction else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak()
    times = []
    for _ in range(a.warmup + a.steps):
        if every:
            sae.tokens_since_fired[::every] = a.batch  # dead: AuxK takes them
        start = time.perf_counter()
        ens.step(x, autocast=device.type == "cuda", y=y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else rss_bytes("VmHWM") - base)
    per_step = sum(times[a.warmup:]) / a.steps
    return {"latents": a.child_latents, "kernel": a.child_kernel, "batch": a.batch,
            "s_per_step": per_step, "tokens_per_s": a.batch / per_step, "peak_bytes": peak}


def run_child(a: argparse.Namespace, latents: int, kernel: str, batch: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.large_dictionary", "--child-latents",
            str(latents), "--child-kernel", kernel, "--batch", str(batch), "--d", str(a.d),
            "--k", str(a.k), "--steps", str(a.steps), "--warmup", str(a.warmup),
            "--dead-fraction", str(a.dead_fraction), "--device", a.device,
            *(["--transcoder", "--d-out", str(a.d_out or a.d)] if a.transcoder else []),
            *(["--skip"] if a.skip else []), *(["--clt", str(a.clt)] if a.clt else [])]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"latents": latents, "kernel": kernel, "batch": batch,
                "error": done.stderr.strip().splitlines()[-1] if done.stderr else "killed"}
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def shape(a: argparse.Namespace) -> dict[str, Any]:
    """The memory model's keywords for a transcoder's or a CLT's step (none for an SAE's)."""
    if a.clt:
        return {"d_out": a.d_out or a.d, "layers": a.clt}
    return {"d_out": a.d_out or a.d, "skip": a.skip} if a.transcoder else {}


def fitting_batch(a: argparse.Namespace, latents: int, kernel: Step, budget: int) -> int:
    """The global batch, halved until the memory model says the step fits in `budget`."""
    batch: int = a.batch
    while batch > 256 and dictionary_memory(d=a.d, latents=latents, k=a.k, batch=batch,
                                            kernel=kernel, **shape(a)).total > budget:
        batch //= 2
    return batch


def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
    budget = int(device_bytes(a.device) * 0.8)
    results = []
    for latents in a.latents:
        for kernel in typing.cast(list[Step], a.kernels):
            batch = fitting_batch(a, latents, kernel, budget)
            r = run_child(a, latents, kernel, batch)
            plan = dictionary_memory(d=a.d, latents=latents, k=a.k, batch=batch,
                                     kernel=kernel, **shape(a))
            r["predicted_bytes"] = plan.total
            r["state_bytes"] = plan.parameters + plan.gradients + plan.optimizer
            results.append(r)
            print(json.dumps(r), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| latents | step | batch | s/step | tokens/s | sparse ÷ dense | peak | predicted "
            "| predicted ÷ peak | params+grads+Adam | peak ÷ that |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rate = {(r["latents"], r["kernel"]): r.get("tokens_per_s") for r in results}
    for r in results:
        if "error" in r:
            rows.append(f"| {r['latents']:,} | {r['kernel']} | {r['batch']} | failed: "
                        f"{r['error']} | | | | | | | |")
            continue
        dense = rate.get((r["latents"], "dense"))
        ratio = f"{r['tokens_per_s'] / dense:.2f}" if r["kernel"] == "sparse" and dense else ""
        rows.append(
            f"| {r['latents']:,} | {r['kernel']} | {r['batch']} | {r['s_per_step']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {ratio} | {gib(r['peak_bytes'])} | "
            f"{gib(r['predicted_bytes'])} | {r['predicted_bytes'] / r['peak_bytes']:.2f} | "
            f"{gib(r['state_bytes'])} | {r['peak_bytes'] / r['state_bytes']:.2f} |")
    return "\n".join(rows)


def largest(a: argparse.Namespace, tp: int, budget: int) -> int:
    """The most latents (a multiple of 4,096) the model says fit in `budget` per device."""
    n = 4096
    while dictionary_memory(d=a.d, latents=n * 2, k=a.k, batch=a.batch, tp=tp).total <= budget:
        n *= 2
    step = n // 8
    while dictionary_memory(d=a.d, latents=n + step, k=a.k, batch=a.batch,
                            tp=tp).total <= budget:
        n += step
    return n


def predict(a: argparse.Namespace, budget: int) -> str:
    """The model's figures for devices with `budget` bytes each (sparse TopK, AuxK on)."""
    lines = [f"budget per device: {gib(budget)} (90% of the device); TopK d={a.d} k={a.k} "
             f"batch {a.batch}, sparse step, Adam",
             f"largest dictionary, 1 device: {largest(a, 1, budget):,} latents",
             f"largest dictionary, tp = 8: {largest(a, 8, budget):,} latents"]
    for n in a.latents:
        plan = dictionary_memory(d=a.d, latents=n, k=a.k, batch=a.batch, tp=8)
        lines.append(f"{n:,} latents at tp = 8, per device: {gib(plan.total)} "
                     f"({'fits' if plan.total <= budget else 'does not fit'})\n{plan.table()}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=int, nargs="+", default=[65536, 262144])
    p.add_argument("--kernels", nargs="+", default=["dense", "sparse"],
                   choices=["dense", "sparse"])
    p.add_argument("--d", type=int, default=768, help="d_model")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--transcoder", action="store_true",
                   help="a transcoder's step (a target of --d-out beside the input)")
    p.add_argument("--d-out", type=int, help="a transcoder's target width (default: --d)")
    p.add_argument("--skip", action="store_true", help="a skip transcoder (with --transcoder)")
    p.add_argument("--clt", type=int, metavar="L",
                   help="a cross-layer transcoder's step over L layers (--latents per layer)")
    p.add_argument("--batch", type=int, default=4096, help="global batch (rows)")
    p.add_argument("--steps", type=int, default=2, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--dead-fraction", type=float, default=0.1,
                   help="latents dead at every step (AuxK's input)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--largest", action="store_true",
                   help="also train the largest dictionary the model fits on this device")
    p.add_argument("--predict-gib", type=float, metavar="GIB",
                   help="print only the memory model's figures for a device of GIB GiB (the "
                   "largest dictionary on one such device and on tp = 8 of them, and the "
                   "per-device plan of --latents at tp = 8); nothing runs")
    p.add_argument("--out", default="bench-out/large_dictionary.json")
    p.add_argument("--child-latents", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-kernel", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_latents:
        print(json.dumps(child(a)))
        return
    if a.predict_gib:
        print(predict(a, int(a.predict_gib * (1 << 30) * 0.9)))
        return
    results = measure(a)
    report: dict[str, Any] = {"device": a.device, "results": results,
                              "cpu_threads": torch.get_num_threads()}
    if a.largest:
        budget = int(device_bytes(a.device) * 0.9)
        n = largest(a, 1, budget)
        r = run_child(a, n, "sparse", a.batch)
        report["largest"] = {**r, "tp8_largest_latents": largest(a, 8, budget)}
        print(json.dumps(report["largest"]))
    print(table(results))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
