"""`actstore steer`: flags parse into one `SteerConfig`, then it runs."""

from __future__ import annotations

from typing import Any

from actstore.shell.flags import Command, field_help
from trainer.steering.steer import SteerConfig, steer


def add_steer_parser(sub: Any) -> None:
    s = sub.add_parser(
        "steer", help="generate text with a dictionary latent's direction added",
        description="Add SCALE times latent I's decoder direction (raw activation units) to "
        "the hooked module's output while the dictionary's causal LM continues a prompt; "
        "prints the unsteered and the steered continuations.")

    def h(name: str) -> str:
        return field_help(SteerConfig, name)
    s.add_argument("--dictionary", required=True, help=h("dictionary"))
    s.add_argument("--latent", type=int, required=True, help=h("latent"))
    s.add_argument("--scale", type=float, required=True, help=h("scale"))
    s.add_argument("--prompt", required=True, help=h("prompt"))
    s.add_argument("--max-new-tokens", type=int, default=SteerConfig.max_new_tokens,
                   help=h("max_new_tokens"))
    s.add_argument("--model", help=h("model"))
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help=h("device"))
    s.add_argument("--sample", action="store_true", help=h("sample"))
    s.add_argument("--seed", type=int, default=0, help=h("seed"))


def run_steer(args: dict[str, Any]) -> int:
    cfg = SteerConfig(**args)
    plain, steered = steer(cfg)
    print(f"prompt:    {cfg.prompt}")
    print(f"unsteered: {plain}")
    print(f"steered:   {steered}   (+{cfg.scale:g} x latent {cfg.latent})")
    return 0


COMMAND = Command("steer", add_steer_parser, run_steer)
"""`actstore steer` (registered as an `actstore.commands` entry point)."""
