"""Experiment trackers beside metrics.jsonl: TensorBoard and Weights & Biases (`--log`).

Every metric line goes to each tracker as scalars named `<dictionary>/<metric>` (and `lr`,
`tokens`), evaluations as `<dictionary>/eval/<metric>`, the end-of-run plots as images, all
from rank 0, with the run's settings and the store's spec and key as the run's config.

    tensorboard   event files in <out>/tensorboard (`tensorboard --logdir runs/`); a resumed
                  run starts its writer with `purge_step` at the checkpoint's step, so readers
                  drop what the interrupted run logged after it: no step twice
    wandb         offline when WANDB_MODE=offline or no API key is configured (files under
                  <out>/wandb, `wandb sync` uploads them), online otherwise; project, entity
                  and name from --wandb-* or the usual WANDB_* variables; the run id is kept in
                  <out>/wandb/run_id so a resumed run continues the same W&B run, logging only
                  steps after the last one the interrupted run logged (the replay is exact, so
                  those values are the ones it would log again)

`actstore eval --log` sends its scores, tables and report to the same trackers of the run it
scores (`Tracker.evaluation`: TensorBoard at the run's last step, W&B after it, as W&B's
steps only increase).

Both libraries are optional extras; `require` names the missing one before any work.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["TRACKERS", "Tracker", "open_trackers", "require"]

#: `--log` choice -> (module to import, the extra that installs it).
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def require(names: Sequence[str]) -> None:
    """Refuse, in one line naming the extra, a tracker whose library is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"--log {name}: unknown tracker; choose from {sorted(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"--log {name} needs the {module} package, which is not "
                             f"installed: pip install 'actstore[{extra}]'")


#: A table to log: its column names and rows.
Table = tuple[list[str], list[list[Any]]]


class Tracker(Protocol):
    """What the training loop and `actstore eval` send to a tracker."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, paths: Sequence[Path]) -> None: ...

    def evaluation(self, step: int, values: dict[str, float], tables: dict[str, Table],
                   report: Path) -> None:
        """`actstore eval`'s scores, tables and report folder (report.md, frontier.png,
        index.html), logged at `step` or, for W&B, after the last step the run logged."""

    def close(self) -> None: ...


def flatten(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


class TensorBoard:
    """Event files under <out>/tensorboard."""

    def __init__(self, out: Path, config: dict[str, Any], resume_at: int,
                 purge: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"),
                                    purge_step=resume_at + 1 if resume_at and purge else None)
        if not resume_at:
            self.writer.add_text("config", f"```\n{_text(config)}\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def images(self, step: int, paths: Sequence[Path]) -> None:
        import matplotlib.image as mpimg

        for p in paths:
            self.writer.add_image(f"plots/{p.stem}", mpimg.imread(p)[..., :3], step,
                                  dataformats="HWC")
        self.writer.flush()

    def evaluation(self, step: int, values: dict[str, float], tables: dict[str, Table],
                   report: Path) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        for name, (columns, rows) in tables.items():  # TensorBoard's text renders markdown
            lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
            lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
            self.writer.add_text(name, "\n".join(lines), step)
        self.writer.add_text("eval/report", (report / "report.md").read_text(), step)
        self.writer.flush()
        self.images(step, [report / "frontier.png"])

    def close(self) -> None:
        self.writer.close()


class WandB:
    """One W&B run per run folder, continued on resume."""

    def __init__(self, out: Path, config: dict[str, Any], resume_at: int, *,
                 project: str | None, entity: str | None, name: str | None) -> None:
        import wandb

        folder = out / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        # WANDB_MODE itself is read by wandb; without it and without a key: offline
        mode: Literal["offline"] | None = (
            None if os.environ.get("WANDB_MODE") or _has_key() else "offline")
        self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT", "actstore"),
                              entity=entity, name=name or out.name, dir=str(out), id=run_id,
                              resume="allow", mode=mode, config=config)
        # steps the interrupted run already logged past its checkpoint are not sent again
        self.after = _last_step(folder) if resume_at else -1

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if step > self.after:
            self.run.log(values, step=step)
            _note_step(self.run.dir, step)

    def images(self, step: int, paths: Sequence[Path]) -> None:
        import wandb

        self.run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths},
                     step=max(step, self.after + 1))

    def evaluation(self, step: int, values: dict[str, float], tables: dict[str, Table],
                   report: Path) -> None:
        import wandb

        at = max(step, self.after + 1)  # W&B's steps only increase
        data: dict[str, Any] = dict(values)
        data |= {name: wandb.Table(columns=list[str | int](c), data=r)
                 for name, (c, r) in tables.items()}
        data["eval/report"] = wandb.Html((report / "index.html").read_text())
        data["plots/frontier"] = wandb.Image(str(report / "frontier.png"))
        self.run.log(data, step=at)
        self.after = at
        _note_step(self.run.dir, at)

    def close(self) -> None:
        self.run.finish()


def _has_key() -> bool:
    return bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()


def _note_step(run_dir: str, step: int) -> None:
    """The last step sent, beside the W&B run's files (read back on resume)."""
    (Path(run_dir).parent / "actstore_last_step").write_text(f"{step}\n")


def _last_step(folder: Path) -> int:
    """The last step any earlier process of this run sent to W&B."""
    steps = [int(p.read_text()) for p in folder.glob("*/actstore_last_step")]
    return max(steps, default=-1)


def _text(config: dict[str, Any]) -> str:
    import json
    return json.dumps(config, indent=1, sort_keys=True, default=str)


def open_trackers(names: Sequence[str], out: Path, config: dict[str, Any], resume_at: int, *,
                  wandb_project: str | None = None, wandb_entity: str | None = None,
                  wandb_name: str | None = None, purge: bool = True) -> list[Tracker]:
    """The trackers of `--log` for this run folder (call on rank 0 only); `purge`: TensorBoard
    drops what was logged after `resume_at` (a resumed run; not an evaluation added to it)."""
    require(names)
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoard(out, config, resume_at, purge))
        else:
            trackers.append(WandB(out, config, resume_at, project=wandb_project,
                                  entity=wandb_entity, name=wandb_name))
    return trackers
