"""Capture: what a hook on any kind of module stores, where the pass stops, and the modules it
refuses (with the reason) before any work."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from actstore.model.capture import Capture, UnknownHookError
from tests.gen_fixtures import save_tiny


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    path = save_tiny("gpt2", tmp_path_factory.mktemp("capture"))
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def test_any_module_kind_equals_a_plain_forward_and_the_pass_stops(gpt2: nn.Module) -> None:
    """A block, an attention module (tuple output), an MLP, the whole base model (a
    ModelOutput) and the embedding, each equal to the same module's output in a plain pass."""
    hooks = ("transformer.wte", "transformer.h.0.attn", "transformer.h.1.mlp", "transformer")
    ids = torch.randint(0, 1000, (3, 7))
    plain: dict[str, torch.Tensor] = {}
    modules = dict(gpt2.named_modules())

    def keep(name: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _a: object, out: object) -> None:
            plain[name] = out[0] if isinstance(out, tuple) else (  # type: ignore[index]
                out.last_hidden_state if name == "transformer" else out)  # type: ignore[attr-defined]
        return fn

    handles = [modules[h].register_forward_hook(keep(h)) for h in hooks]
    with torch.no_grad():
        gpt2(input_ids=ids)
    for h in handles:
        h.remove()
    head_calls = []
    counter = gpt2.lm_head.register_forward_hook(lambda *_: head_calls.append(1))
    with Capture(gpt2, hooks) as cap:
        got = cap.run(ids)
        got = cap.run(ids)  # after the probe
    counter.remove()
    assert head_calls == [1]  # the probe's pass only: the captured pass stopped before the head
    for h in hooks:
        torch.testing.assert_close(got[h], plain[h], rtol=0, atol=0)


class SharedLinear(nn.Module):
    """A module applied twice per pass (weight tying), and one whose output is per sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.pool = nn.Identity()

    def forward(self, input_ids: torch.Tensor, **_: object) -> torch.Tensor:
        h = self.lin(self.lin(self.emb(input_ids)))
        return self.pool(h.mean(dim=1))


@pytest.mark.parametrize(("hook", "message"), [
    ("lin", r"hook 'lin' runs 2 times per forward pass \(a shared module\)"),
    ("pool", r"hook 'pool' outputs shape \(2, 4\) for input \(2, 3\), not \(batch, tokens, "
             r"width\)"),
])
def test_hooks_without_one_row_per_token_are_refused(hook: str, message: str) -> None:
    with Capture(SharedLinear(), (hook,)) as cap, pytest.raises(UnknownHookError, match=message):
        cap.run(torch.zeros(1, 5, dtype=torch.long))
