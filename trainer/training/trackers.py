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


class Tracker(Protocol):
    """What the training loop sends to a tracker."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, paths: Sequence[Path]) -> None: ...

    def close(self) -> None: ...


def flatten(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


class TensorBoard:
    """Event files under <out>/tensorboard."""

    def __init__(self, out: Path, config: dict[str, Any], resume_at: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"),
                                    purge_step=resume_at + 1 if resume_at else None)
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
                  wandb_name: str | None = None) -> list[Tracker]:
    """The trackers of `--log` for this run folder (call on rank 0 only)."""
    require(names)
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoard(out, config, resume_at))
        else:
            trackers.append(WandB(out, config, resume_at, project=wandb_project,
                                  entity=wandb_entity, name=wandb_name))
    return trackers
