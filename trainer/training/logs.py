"""metrics.jsonl: one JSON object per logging step (and per evaluation), written by rank 0,
and the PNG plots drawn from it at the end of a run (`plot_run`).

    {"step": 50, "tokens": 204800, "lr": 1e-4, "time": 12.3,
     "dictionaries": {"topk-n3072-k32": {"mse": ..., "fvu": ..., "l0": ..., "dead": ...}}}
    {"step": 50, "eval": {"topk-n3072-k32": {"ce_clean": ..., "loss_recovered": ...}}}

On resume, lines past the checkpoint's step (written by the interrupted run after its last
checkpoint) are dropped, so the file reads as one uninterrupted run. Every line also goes to the
run's experiment trackers (`trainer/tracking/trackers.py`: TensorBoard, W&B), when it has any.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from actstore.store.location import Location
from trainer.tracking.trackers import Tracker, flatten

FILE = "metrics.jsonl"


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends metric lines (a no-op on ranks other than 0)."""

    def __init__(self, out: Path, names: Sequence[str], enabled: bool) -> None:
        self.path, self.names, self.enabled = out / FILE, list(names), enabled
        self._file: TextIO | None = None
        self._start = time.perf_counter()
        self.trackers: list[Tracker] = []

    def open(self, resume_at: int) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_at and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_at]
        Location.from_url(str(self.path.parent)).put(  # atomic: a crash keeps the old log
            self.path.name, "".join(line + "\n" for line in kept).encode())
        self._file = open(self.path, "a")  # noqa: SIM115 -- kept open for the run

    def _emit(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def write(self, step: int, tokens: int, lr: float,
              metrics: Sequence[dict[str, float]]) -> None:
        self._emit({"step": step, "tokens": tokens, "lr": lr,
                    "time": round(time.perf_counter() - self._start, 3),
                    "dictionaries": dict(zip(self.names, metrics, strict=True))})
        values = {"lr": lr, "tokens": float(tokens)}
        for name, m in zip(self.names, metrics, strict=True):
            values |= flatten(name, m)
        for t in self.trackers:
            t.scalars(step, values)

    def write_eval(self, step: int, results: Sequence[dict[str, float]]) -> None:
        self._emit({"step": step, "eval": dict(zip(self.names, results, strict=True))})
        values: dict[str, float] = {}
        for name, r in zip(self.names, results, strict=True):
            values |= flatten(f"{name}/eval", r)
        for t in self.trackers:
            t.scalars(step, values)

    def images(self, step: int, paths: Sequence[Path]) -> None:
        """The end-of-run plots, to the trackers."""
        for t in self.trackers:
            t.images(step, paths)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for t in self.trackers:
            t.close()
        self.trackers = []


CURVES = ("mse", "fvu", "l0", "dead")


def plot_run(out: Path, names: Sequence[str], densities: Sequence[torch.Tensor]) -> list[Path]:
    """out/plots/curves.png and out/plots/latent_density.png."""
    import matplotlib as mpl  # imported only when a run ends: it takes seconds to load

    mpl.use("Agg")  # files only; no display on a cluster node
    import matplotlib.pyplot as plt

    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    lines = [r for r in read_metrics(out) if "dictionaries" in r]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax, key in zip(axes, CURVES, strict=True):
        for name in names:
            ax.plot([r["tokens"] for r in lines], [r["dictionaries"][name][key] for r in lines],
                    label=name)
        ax.set_title(key)
        ax.set_xlabel("tokens")
        if key in ("mse", "fvu"):
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    curves = folder / "curves.png"
    fig.savefig(curves, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, dens in zip(names, densities, strict=True):
        # log10 firing frequency; latents that never fired are drawn at -10
        ax.hist(torch.log10(dens.clamp_min(1e-10)).flatten().numpy(), bins=50, alpha=0.5,
                label=name)  # a CLT's (latents, layers) as one histogram
    ax.set_xlabel("log10 fraction of tokens a latent fires on")
    ax.set_ylabel("latents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    density = folder / "latent_density.png"
    fig.savefig(density, dpi=100)
    plt.close(fig)
    return [curves, density]
