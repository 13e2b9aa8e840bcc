"""`MODULE:input` hooks: what a module receives, captured, refused and replaced like an output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from actstore.model.capture import Capture, UnknownHookError, resolve_hooks
from actstore.model.hooks import replaced_at
from tests.gen_fixtures import save_tiny, save_tiny_encoder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    path = save_tiny("gpt2", tmp_path_factory.mktemp("inputs"))
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def outputs_of(model: nn.Module, names: list[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named module's output in a plain forward pass (the reference)."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())

    def keep(name: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _a: object, out: object) -> None:
            seen[name] = out[0] if isinstance(out, tuple) else out  # type: ignore[assignment,index]
        return fn
    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return seen


def test_an_input_hook_equals_the_output_of_the_module_that_feeds_it(gpt2: nn.Module) -> None:
    """GPT-2's MLP receives ln_2's output and its c_proj receives the activation's output."""
    ids = torch.randint(0, 1000, (3, 7))
    hooks = ("transformer.h.1.mlp:input", "transformer.h.1.mlp.c_proj:input",
             "transformer.h.1.mlp")
    with Capture(gpt2, hooks) as cap:
        got = cap.run(ids)
    plain = outputs_of(gpt2, ["transformer.h.1.ln_2", "transformer.h.1.mlp.act",
                              "transformer.h.1.mlp"], ids)
    torch.testing.assert_close(got["transformer.h.1.mlp:input"], plain["transformer.h.1.ln_2"])
    torch.testing.assert_close(got["transformer.h.1.mlp.c_proj:input"],
                               plain["transformer.h.1.mlp.act"])
    torch.testing.assert_close(got["transformer.h.1.mlp"], plain["transformer.h.1.mlp"])


def test_an_input_hook_of_a_bert_layer_reads_the_attention_output(tmp_path: Path) -> None:
    """MiniLM-like: `encoder.layer.0.intermediate:input` is the attention block's output."""
    model = transformers.AutoModel.from_pretrained(save_tiny_encoder(tmp_path)).eval()
    ids = torch.randint(0, 100, (2, 5))
    hook = resolve_hooks(model, ["encoder.layer.0.intermediate:input"])
    assert hook == ("encoder.layer.0.intermediate:input",)
    with Capture(model, hook) as cap:
        got = cap.run(ids)[hook[0]]
    plain = outputs_of(model, ["encoder.layer.0.attention"], ids)["encoder.layer.0.attention"]
    torch.testing.assert_close(got, plain)


@pytest.mark.parametrize(("hook", "message"), [
    ("transformer.h.1.mlp:output", "the only suffix"),
    ("transformer.h.9.mlp:input", "not a module"),
])
def test_a_bad_input_hook_is_refused_by_name(gpt2: nn.Module, hook: str, message: str) -> None:
    with pytest.raises(UnknownHookError, match=message):
        resolve_hooks(gpt2, [hook])


def test_an_input_and_an_output_of_one_module_are_two_hooks(gpt2: nn.Module) -> None:
    hooks = ("transformer.h.0.mlp:input", "transformer.h.0.mlp")
    assert resolve_hooks(gpt2, hooks) == hooks
    with pytest.raises(UnknownHookError, match="same module twice"):
        resolve_hooks(gpt2, ["transformer.h.0.mlp:input", "h.0.mlp:input"])


def test_an_input_without_one_row_per_token_is_refused_before_any_work(
        gpt2: nn.Module) -> None:
    """The LM head's input is fine; the rotary-free position embedding's input (position ids,
    integers of shape (1, tokens)) is not one activation per token."""
    with pytest.raises(UnknownHookError, match="not \\(batch, tokens, width\\)"), \
            Capture(gpt2, ("transformer.wpe:input",)) as cap:
        cap.run(torch.randint(0, 1000, (2, 4)))


def test_replacing_an_input_changes_what_the_module_computes(gpt2: nn.Module) -> None:
    """Zeroing the MLP's input equals running the MLP on zeros."""
    ids = torch.randint(0, 1000, (2, 6))
    mlp = dict(gpt2.named_modules())["transformer.h.1.mlp"]
    seen: list[torch.Tensor] = []
    handle = mlp.register_forward_hook(lambda _m, _a, out: seen.append(out))
    with torch.no_grad(), replaced_at(gpt2, "transformer.h.1.mlp:input", torch.zeros_like):
        gpt2(input_ids=ids)
    handle.remove()
    with torch.no_grad():
        expected = mlp(torch.zeros(2, 6, gpt2.config.n_embd))
    torch.testing.assert_close(seen[0], expected)
