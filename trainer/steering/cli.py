"""`actstore steer`: flags parse into one `SteerConfig`, then it runs."""

from __future__ import annotations

from typing import Any

from actstore.shell.flags import Command, add_fields, from_flags
from trainer.steering.steer import SteerConfig, steer


def add_steer_parser(sub: Any) -> None:
    s = sub.add_parser(
        "steer", help="generate text with a dictionary latent's direction added",
        description="Add SCALE times latent I's decoder direction (raw activation units) to "
        "the hooked module's output while the dictionary's causal LM continues a prompt; "
        "prints the unsteered and the steered continuations.")
    add_fields(s, SteerConfig)


def run_steer(args: dict[str, Any]) -> int:
    cfg = from_flags(SteerConfig, args)
    plain, steered = steer(cfg)
    print(f"prompt:    {cfg.prompt}")
    print(f"unsteered: {plain}")
    print(f"steered:   {steered}   (+{cfg.scale:g} x latent {cfg.latent})")
    return 0


COMMAND = Command("steer", add_steer_parser, run_steer, config=SteerConfig)
"""`actstore steer` (registered as an `actstore.commands` entry point)."""
