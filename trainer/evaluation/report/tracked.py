"""`actstore eval --log tensorboard,wandb`: the report sent to the experiment trackers of the
run it scores (W&B: the run whose id the run folder keeps in wandb/run_id; TensorBoard: the
run folder's event files), or of the report folder when no run of ours is scored.

    scalars   <dictionary>/eval/{fvu,l0,fired_fraction[,mmcs]}, <method>/eval/recovered@k<k>,
              baselines/<method>/fvu@k<k>
    tables    eval/frontier (method, k, l0, fvu), eval/loss_recovered (method, k, recovered)
    report    report.md (TensorBoard's text), index.html (W&B's HTML), plots/frontier
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.evaluation.config import EvalConfig
from trainer.evaluation.run import Evaluation
from trainer.tracking import trackers


def last_step(run: Path) -> int:
    """The last step the run logged (metrics.jsonl), where its evaluation is logged."""
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    steps = [int(json.loads(line)["step"]) for line in lines if line.strip()]
    return max(steps, default=0)


def scalars(ev: Evaluation) -> dict[str, float]:
    """The scores as tracker scalars (the module docstring's names)."""
    out = {f"{name}/eval/{k}": float(v) for name, s in ev.dictionaries.items()
           for k, v in s.items()}
    out |= {f"baselines/{r['method']}/fvu@k{r['k']}": float(r["fvu"]) for r in ev.frontier
            if r["method"] not in ev.dictionaries}
    out |= {f"{r['method']}/eval/recovered@k{r['k']}": float(r["recovered"])
            for r in ev.spliced}
    return out


def tables(ev: Evaluation) -> dict[str, trackers.Table]:
    frontier = [[r["method"], int(r["k"]), float(r["l0"]), float(r["fvu"])]
                for r in ev.frontier]
    out: dict[str, trackers.Table] = {"eval/frontier": (["method", "k", "l0", "fvu"], frontier)}
    if ev.spliced:
        out["eval/loss_recovered"] = (["method", "k", "recovered"], [
            [r["method"], int(r["k"]), float(r["recovered"])] for r in ev.spliced])
    return out


def log_evaluation(cfg: EvalConfig, ev: Evaluation, report: Path) -> Path:
    """Send the report to `cfg.log`'s trackers; returns the folder they log in."""
    folder = Path(cfg.run) if cfg.run is not None else Path(cfg.out)
    step = last_step(folder) if cfg.run is not None else 0
    config: dict[str, Any] = {"eval": ev.meta["settings"] | {"report": str(report)}}
    opened = trackers.open_trackers(cfg.log, folder, config, step, purge=False,
                                    wandb_project=cfg.wandb_project,
                                    wandb_entity=cfg.wandb_entity, wandb_name=cfg.wandb_name)
    try:
        for t in opened:
            t.evaluation(step, scalars(ev), tables(ev), report)
    finally:
        for t in opened:
            t.close()
    return folder
