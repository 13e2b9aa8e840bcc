"""Forward hooks that change what a hook names (a module's output, or with `:input` its
input): replace it (loss recovered with a dictionary's reconstruction spliced in, a
transcoder's prediction from another hook recorded in the same pass) or add to it (steering).
What reads activations for a store is `capture.Capture`.

A module's output is its tensor, or the first element of a tuple or list (attention returns
weights beside it); the other elements pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actstore.model.capture import hook_module

Replace = Callable[[torch.Tensor], torch.Tensor]
"""A function of a module's output activations, same shape."""


@contextmanager
def replaced(module: nn.Module, replace: Replace) -> Iterator[None]:
    """Within the block, `module`'s output activations are `replace(output)`."""
    def hook(_m: nn.Module, _args: Any, output: Any) -> Any:
        if isinstance(output, tuple | list):
            return type(output)([replace(output[0]), *output[1:]])
        return replace(output)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replaced_input(module: nn.Module, replace: Replace) -> Iterator[None]:
    """Within the block, `module` receives `replace(its first positional argument)`."""
    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (replace(args[0]), *args[1:])
    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replaced_at(model: nn.Module, hook: str, replace: Replace) -> Iterator[None]:
    """Within the block, the activations hook `hook` names (a module's output, or with
    `:input` its input) are `replace(them)`."""
    name, reads_input = hook_module(hook)
    modules = dict(model.named_modules())
    if name not in modules:
        raise KeyError(f"hook {hook!r} is not a module of {type(model).__name__}")
    with (replaced_input if reads_input else replaced)(modules[name], replace):
        yield


@contextmanager
def recording(model: nn.Module, hook: str) -> Iterator[list[torch.Tensor]]:
    """Within the block, the list yielded holds the activations hook `hook` names, appended
    on every forward pass (the source of a transcoder's replacement, read later in the same
    pass)."""
    name, reads_input = hook_module(hook)
    seen: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x
    module = dict(model.named_modules())[name]
    with (replaced_input if reads_input else replaced)(module, keep):
        yield seen


@contextmanager
def added(model: nn.Module, hook: str, vector: torch.Tensor) -> Iterator[None]:
    """Within the block, `vector` is added to the activations hook `hook` names at every
    position."""
    with replaced_at(model, hook, lambda x: x + vector.to(x.dtype)):
        yield
