"""Our circuit-tracer export, loaded by circuit-tracer itself (its own environment, its loader
`load_transcoders_from_cache`), gives the codes and predictions our transcoders give, layer by
layer, through its dense and its attribution (sparse) paths.

Needs circuit-tracer installed apart from actstore (`scripts/install_circuit_tracer.sh`, which
`.ci/run` calls); the path of that environment's python comes in ACTSTORE_CIRCUIT_TRACER_PYTHON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actstore.loader.delivery import Normalizer
from tests.trainer.dictionary.helpers import trained_like
from trainer.dictionary.dictionaries import SparseDictionary
from trainer.dictionary.export import export_circuit_tracer

PYTHON = os.environ.get("ACTSTORE_CIRCUIT_TRACER_PYTHON")
D, N = 12, 40
#: Each case a two-layer set: its layers' activations and whether they have the skip.
CASES = {"relu": (("relu", "relu"), False),
         "jumprelu-skip": (("jumprelu", "batchtopk"), True)}


def trained_transcoder(arch: str, skip: bool, seed: int, *, d_out: int = D
                       ) -> SparseDictionary:
    """A transcoder, decoder included, as after training."""
    return trained_like(arch, d=D, n=N, seed=seed, noise_seed=seed + 100, d_out=d_out,
                        skip=skip, decoder_noise=0.1)


def _layer(arch: str, skip: bool, seed: int) -> tuple[SparseDictionary, Normalizer, Normalizer]:
    """A transcoder with its own input and target normalisers (centred and scaled)."""
    g = torch.Generator().manual_seed(seed + 200)
    return (trained_transcoder(arch, skip, seed), Normalizer(torch.randn(D, generator=g), 0.37),
            Normalizer(torch.randn(D, generator=g), 2.1 + seed))


@pytest.mark.circuit_tracer
@pytest.mark.skipif(not PYTHON, reason="ACTSTORE_CIRCUIT_TRACER_PYTHON not set "
                    "(scripts/install_circuit_tracer.sh makes that environment)")
def test_circuit_tracer_loads_the_transcoder_set_and_agrees(tmp_path: Path) -> None:
    assert PYTHON is not None
    x = torch.randn(2, 64, D, generator=torch.Generator().manual_seed(3)) * 4 + 1
    ours = {}
    for name, (archs, skip) in CASES.items():
        layers = {i: _layer(arch, skip, seed=i + 1) for i, arch in enumerate(archs)}
        export_circuit_tracer(tmp_path / name / "circuit_tracer", layers,
                              feature_input_hook="ln2.hook_normalized",
                              feature_output_hook="hook_mlp_out", model_name="m")
        save_file({"x": x}, tmp_path / name / "inputs.safetensors")
        zs, ys = [], []
        with torch.no_grad():
            for i, (tc, norm, target) in layers.items():
                xn = norm.apply(x[i])
                zs.append(tc.encode(xn))
                ys.append(target.invert(tc.decode(zs[-1], xn)))
        ours[name] = (torch.stack(zs), torch.stack(ys))
        for z in zs:  # every layer's comparison is between real, sparse codes
            assert 64 < int((z > 0).sum()) < z.numel() // 2
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "circuit_tracer_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (archs, skip) in CASES.items():
        assert loaded[name] == {
            "layers": 2, "d_transcoder": N, "clt": False, "skip": skip,
            "input_hook": "ln2.hook_normalized",
            "output_hook": "hook_mlp_out", "scan": "circuit_tracer", "model_name": "m",
            "activations": ["relu" if a == "relu" else "jumprelu" for a in archs]}
        theirs = load_file(tmp_path / name / "circuit_tracer_outputs.safetensors")
        z, y_hat = ours[name]
        for path in ("", "_sparse"):
            torch.testing.assert_close(theirs["z" + path], z, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(theirs["y_hat" + path], y_hat, rtol=1e-4, atol=1e-4)
        # the layer files are what circuit-tracer writes itself: same tensors, same shapes
        for i in range(2):
            mine = load_file(tmp_path / name / "circuit_tracer" / f"layer_{i}.safetensors")
            resaved = load_file(tmp_path / name / "resaved" / f"layer_{i}.safetensors")
            assert {k: v.shape for k, v in mine.items()} == {
                k: v.shape for k, v in resaved.items()}


def test_circuit_tracer_export_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    """No environment needed: the one-line refusals, before anything is written."""
    def one(tc: SparseDictionary) -> dict[int, tuple[SparseDictionary, Normalizer, Normalizer]]:
        return {0: (tc, Normalizer(None, 1.0), Normalizer(None, 1.0))}

    hooks = {"feature_input_hook": "ln2.hook_normalized", "feature_output_hook": "hook_mlp_out"}
    with pytest.raises(ValueError, match="relu, jumprelu and batchtopk transcoders, not topk"):
        export_circuit_tracer(tmp_path / "a", one(trained_transcoder("topk", False, 1)), **hooks)
    with pytest.raises(ValueError, match="as wide as their input: layer 0 is 12 -> 7"):
        export_circuit_tracer(tmp_path / "b", one(trained_transcoder("relu", False, 1, d_out=7)),
                              **hooks)
    gap = {1: one(trained_transcoder("relu", False, 1))[0]}
    with pytest.raises(ValueError, match="every layer from 0"):
        export_circuit_tracer(tmp_path / "c", gap, **hooks)
    mixed = {**one(trained_transcoder("relu", False, 1)),
             1: one(trained_transcoder("relu", True, 2))[0]}
    with pytest.raises(ValueError, match="share one latent count and skip"):
        export_circuit_tracer(tmp_path / "d", mixed, **hooks)
    assert not any(tmp_path.iterdir())
