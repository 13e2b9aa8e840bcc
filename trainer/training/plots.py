"""PNG plots at the end of a run: the metric curves and the latent-density histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt
import torch

from trainer.training.logs import read_metrics

CURVES = ("mse", "fvu", "l0", "dead")


def plot_run(out: Path, names: Sequence[str], densities: Sequence[torch.Tensor]) -> list[Path]:
    """out/plots/curves.png and out/plots/latent_density.png."""
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
