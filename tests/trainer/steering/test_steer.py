"""Steering: the hooked module's output moves by exactly scale · direction, later layers see
it, and `actstore steer` prints both continuations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from actstore.loader.delivery import Normalizer
from actstore.model.hooks import added
from actstore.shell.main import main
from tests.gen_fixtures import save_tiny, save_tiny_encoder
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import save_dictionary
from trainer.steering.steer import direction

HOOK = "transformer.h.0"


def _dictionary(tmp_path: Path, model: str, hook: str = HOOK) -> tuple[Path, SparseDictionary]:
    d = int(transformers.AutoConfig.from_pretrained(model).hidden_size)
    sae = SparseDictionary(DictionaryConfig("topk", d, 16, k=2),
                           torch.Generator().manual_seed(0))
    folder = tmp_path / "dict"
    save_dictionary(folder, sae, Normalizer(torch.randn(d), 2.0),
                    {"store": "x", "store_key": "0" * 16, "hook": hook, "model": model})
    return folder, sae


def test_the_hook_output_moves_by_exactly_scale_times_the_direction(tmp_path: Path) -> None:
    model_dir = save_tiny("gpt2", tmp_path)
    folder, sae = _dictionary(tmp_path, model_dir)
    d = direction(str(folder), 3)
    assert torch.allclose(d.vector, sae.W_dec.detach()[3] / 2.0)  # raw units: / norm scale
    assert (d.hook, d.model) == (HOOK, model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    seen: list[torch.Tensor] = []  # what block 1 receives: block 0's output, after the hook
    model.transformer.h[1].register_forward_pre_hook(lambda _m, a: seen.append(a[0].clone()))
    with torch.inference_mode():
        clean = model(ids).logits
        with added(model, d.hook, 7.5 * d.vector):
            steered = model(ids).logits
        after = model(ids).logits
    shift = seen[1] - seen[0]
    assert torch.allclose(shift, (7.5 * d.vector).expand_as(shift), atol=1e-5)  # every position
    assert (steered - clean).abs().max() > 1e-3  # the layers after it see it
    assert torch.equal(after, clean)  # the hook is gone afterwards
    assert torch.equal(seen[2], seen[0])


def test_steer_command_prints_both_continuations(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = save_tiny("gpt2", tmp_path)
    folder, _ = _dictionary(tmp_path, model_dir)
    args = ["steer", "--dictionary", str(folder), "--latent", "3", "--prompt",
            "def main():", "--max-new-tokens", "8", "--device", "cpu"]
    assert main([*args, "--scale", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    plain = lines[1].removeprefix("unsteered: ")
    assert lines[2].startswith(f"steered:   {plain}   (+0 x latent 3)")  # scale 0: the same
    assert main([*args, "--scale", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"unsteered: {plain}"  # greedy: reproducible
    assert not lines[2].startswith(f"steered:   {plain}   ")  # a large push changes the text
    assert main([*args[:4], "99", *args[5:], "--scale", "1"]) == 2
    assert "--latent 99 is not in" in capsys.readouterr().err


def test_steering_an_encoder_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = save_tiny_encoder(tmp_path)
    folder, _ = _dictionary(tmp_path, model_dir, "encoder.layer.0")
    assert main(["steer", "--dictionary", str(folder), "--latent", "0", "--scale", "1",
                 "--prompt", "x", "--device", "cpu"]) == 2
    assert "is not a causal LM" in capsys.readouterr().err
