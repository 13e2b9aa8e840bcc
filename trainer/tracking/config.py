"""The tracker flags every command that logs shares (`actstore train`, `actstore eval`): a
keyword-only base of their configs, so its fields follow theirs and are declared once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where a command's numbers go beside its own files."""

    log: tuple[str, ...] = ()
    """Experiment trackers beside the command's own files (train's metrics.jsonl, eval's
    report): tensorboard, wandb (several, or a comma list; default: none)."""
    wandb_project: str | None = None
    """W&B project (default: $WANDB_PROJECT, else actstore)."""
    wandb_entity: str | None = None
    """W&B entity (default: $WANDB_ENTITY, else your default entity)."""
    wandb_name: str | None = None
    """W&B run name (default: the --out folder's name)."""

    def __post_init__(self) -> None:
        # --log wandb,tensorboard or --log wandb tensorboard (or one string, from a file)
        logs = (self.log,) if isinstance(self.log, str) else self.log
        object.__setattr__(self, "log", tuple(n.strip() for v in logs for n in v.split(",")
                                              if n.strip()))
