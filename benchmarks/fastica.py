"""FastICA in PyTorch (`trainer.evaluation.ica`) against scikit-learn's, the same fit in one run.

    python -m benchmarks.fastica [--rows 200000] [--d 384] [--max-iter 50] [--device cuda]

The data: d independent Laplace sources (unit variance) mixed by a random matrix, so both
fits can also be scored on recovering the true sources. Both run the parallel algorithm with
logcosh, whitening to unit variance, the same max_iter and tol; the table gives wall time,
iterations, time per iteration, the ratio, the agreement of the two fits (each torch component
matched to its best scikit-learn component, |cos|) and each fit's recovery of the mixing
directions. scikit-learn runs in float64 on the CPU; ours in float32 products and float64
whitening/decorrelation, on `--device`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.evaluation.ica import fast_ica


def mixed_sources(rows: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, d) observations and the (d, d) mixing matrix whose columns are the sources'
    directions."""
    gen = np.random.default_rng(seed)
    sources = gen.laplace(size=(rows, d)) / np.sqrt(2.0)
    mixing = gen.standard_normal((d, d))
    return (sources @ mixing.T).astype(np.float32), mixing


def match(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the rows of `a` of the best |cos| with a row of `b`."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.abs(a @ b.T).max(1).mean())


@dataclass(frozen=True)
class Fit:
    """One timed fit."""

    seconds: float
    iterations: int
    unmixing: np.ndarray
    """(components, d)."""
    mixing: np.ndarray
    """(d, components)."""


def run_sklearn(x: np.ndarray, max_iter: int, tol: float, seed: int) -> Fit:
    from sklearn.decomposition import FastICA  # type: ignore[import-untyped]

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: reported as a column
        ica = FastICA(algorithm="parallel", fun="logcosh", whiten="unit-variance",
                      max_iter=max_iter, tol=tol, random_state=seed)
        ica.fit(x.astype(np.float64))
    seconds = time.perf_counter() - start
    return Fit(seconds, int(ica.n_iter_), ica.components_, ica.mixing_)


def run_torch(x: np.ndarray, max_iter: int, tol: float, seed: int, device: str) -> Fit:
    data = torch.from_numpy(x).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit = fast_ica(data, max_iter=max_iter, tol=tol, seed=seed)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return Fit(seconds, fit.iterations, fit.unmixing.cpu().double().numpy(),
               fit.mixing.cpu().double().numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000, help="observations")
    p.add_argument("--d", type=int, default=384, help="dimensions (= sources = components)")
    p.add_argument("--max-iter", type=int, default=50, help="fixed-point iterations, both fits")
    p.add_argument("--tol", type=float, default=1e-4, help="convergence tolerance, both fits")
    p.add_argument("--device", default="cpu", help="where the torch fit runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sklearn", action="store_true", help="time only the torch fit")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    x, mixing = mixed_sources(args.rows, args.d, args.seed)
    runs = {"torch": run_torch(x, args.max_iter, args.tol, args.seed, args.device)}
    if not args.skip_sklearn:
        runs["sklearn"] = run_sklearn(x, args.max_iter, args.tol, args.seed)
    truth = mixing.T  # rows: the sources' directions
    table: dict[str, dict[str, float]] = {}
    print(f"FastICA, {args.rows} x {args.d}, max_iter {args.max_iter}, tol {args.tol}, "
          f"torch on {args.device}, {torch.get_num_threads()} CPU threads")
    print(f"{'fit':8} {'seconds':>9} {'iters':>6} {'s/iter':>8} {'recovery':>9}")
    for name, r in runs.items():
        rec = match(truth, r.mixing.T)
        per = r.seconds / max(r.iterations, 1)
        table[name] = {"seconds": r.seconds, "iterations": r.iterations,
                       "seconds_per_iteration": per, "recovery_mean_abs_cos": rec}
        print(f"{name:8} {r.seconds:9.2f} {r.iterations:6d} {per:8.3f} {rec:9.4f}")
    if "sklearn" in runs:
        agree = match(runs["torch"].unmixing, runs["sklearn"].unmixing)
        speed = table["sklearn"]["seconds"] / table["torch"]["seconds"]
        per = (table["sklearn"]["seconds_per_iteration"]
               / table["torch"]["seconds_per_iteration"])
        table["ratio"] = {"wall_speedup": speed, "per_iteration_speedup": per,
                          "agreement_mean_abs_cos": agree}
        print(f"torch vs sklearn: {speed:.2f}x wall, {per:.2f}x per iteration; components "
              f"agree at mean |cos| {agree:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": table},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
