"""Our SAELens export, loaded by SAELens itself (its own environment, `SAE.load_from_disk`),
gives the codes and reconstructions our dictionaries give, for every architecture; our sparsify
export likewise through sparsify's `SparseCoder.load_from_disk` (TopK).

Needs SAELens installed apart from actstore (`scripts/install_saelens.sh`, which `.ci/run`
calls); the path of that environment's python comes in ACTSTORE_SAELENS_PYTHON.
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
from trainer.dictionary.export import export_saelens, export_sparsify

PYTHON = os.environ.get("ACTSTORE_SAELENS_PYTHON")
pytestmark = [pytest.mark.saelens,
              pytest.mark.skipif(not PYTHON, reason="ACTSTORE_SAELENS_PYTHON not set "
                                 "(scripts/install_saelens.sh makes that environment)")]
ARCHS = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE",
         "jumprelu": "JumpReLUSAE", "matryoshka": "JumpReLUSAE"}


def test_saelens_loads_every_architecture_and_agrees(tmp_path: Path) -> None:
    assert PYTHON is not None
    norm = Normalizer(torch.randn(12), 0.37)  # centring and scaling, both folded in
    source = {"model": "m", "hook": "blocks.1", "context_length": 8, "dataset": "ds",
              "bos_policy": "keep"}
    ours = {}
    for arch in ARCHS:
        sae = trained_like(arch)
        export_saelens(tmp_path / arch / "saelens", sae, norm, source)
        x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)) * 4 + 1
        save_file({"x": x}, tmp_path / arch / "inputs.safetensors")
        with torch.no_grad():
            z = sae.encode(norm.apply(x))
            ours[arch] = (z, norm.invert(sae.decode(z)))
        assert int((z > 0).sum()) > 64  # the comparison is not between empty codes
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "saelens_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for arch, cls in ARCHS.items():
        assert loaded[arch]["class"] == cls
        assert loaded[arch]["hook_name"] == "blocks.1"
        theirs = load_file(tmp_path / arch / "saelens_outputs.safetensors")
        z, x_hat = ours[arch]
        torch.testing.assert_close(theirs["z"], z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(theirs["x_hat"], x_hat, rtol=1e-4, atol=1e-4)
        # the files are what SAELens 6 writes itself: same config, same tensors
        mine = json.loads((tmp_path / arch / "saelens" / "cfg.json").read_text())
        resaved = json.loads((tmp_path / arch / "resaved" / "cfg.json").read_text())
        assert mine == resaved
        assert (load_file(tmp_path / arch / "saelens" / "sae_weights.safetensors").keys()
                == load_file(tmp_path / arch / "resaved" / "sae_weights.safetensors").keys())
    assert loaded["topk"]["k"] == 5


def test_sparsify_loads_the_topk_export_and_agrees(tmp_path: Path) -> None:
    """sparsify's own loader (same environment as SAELens', `scripts/install_saelens.sh`)."""
    assert PYTHON is not None
    norm = Normalizer(torch.randn(12), 0.37)
    sae = trained_like("topk")
    export_sparsify(tmp_path / "topk" / "sparsify", sae, norm)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)) * 4 + 1
    save_file({"x": x}, tmp_path / "topk" / "inputs.safetensors")
    with torch.no_grad():
        z = sae.encode(norm.apply(x))
        x_hat = norm.invert(sae.decode(z))
    assert int((z > 0).sum()) == 64 * 5  # every row fires its k latents: a real comparison
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "sparsify_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "topk": {"k": 5, "latents": 40, "d_in": 12}}
    theirs = load_file(tmp_path / "topk" / "sparsify_outputs.safetensors")
    torch.testing.assert_close(theirs["z"], z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs["x_hat"], x_hat, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="sparsify has no relu coder"):
        export_sparsify(tmp_path / "relu", trained_like("relu"), norm)


TRANSCODERS = {("relu", False): "Transcoder", ("relu", True): "SkipTranscoder",
               ("jumprelu", False): "JumpReLUTranscoder",
               ("jumprelu", True): "JumpReLUSkipTranscoder",
               ("batchtopk", True): "JumpReLUSkipTranscoder"}


def trained_transcoder(arch: str, skip: bool, d_out: int = 7) -> SparseDictionary:
    """A transcoder, 12 wide to `d_out`, as after training."""
    return trained_like(arch, d_out=d_out, skip=skip)


def _ours(tc: SparseDictionary, norm: Normalizer, target: Normalizer, x: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and raw prediction: normalise, encode, predict (skip included), unnormalise."""
    with torch.no_grad():
        xn = norm.apply(x)
        z = tc.encode(xn)
        return z, target.invert(tc.decode(z, xn))


def test_saelens_loads_every_transcoder_and_agrees(tmp_path: Path) -> None:
    """relu and jumprelu transcoders (and batchtopk, at its threshold), with and without the
    skip, input 12 wide and target 7: SAELens' own classes, codes and predictions."""
    assert PYTHON is not None
    norm, target = Normalizer(torch.randn(12), 0.37), Normalizer(torch.randn(7), 2.1)
    source = {"model": "m", "hook": "blocks.1.ln2", "target_hook": "blocks.1.mlp",
              "context_length": 8, "dataset": "ds", "bos_policy": "keep"}
    ours = {}
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)) * 4 + 1
    for (arch, skip) in TRANSCODERS:
        name = f"{arch}-{'skip' if skip else 'plain'}"
        tc = trained_transcoder(arch, skip)
        export_saelens(tmp_path / name / "saelens", tc, norm, source, target)
        save_file({"x": x}, tmp_path / name / "inputs.safetensors")
        ours[name] = _ours(tc, norm, target, x)
        assert int((ours[name][0] > 0).sum()) > 64  # not a comparison of empty codes
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "saelens_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for (arch, skip), cls in TRANSCODERS.items():
        name = f"{arch}-{'skip' if skip else 'plain'}"
        assert loaded[name]["class"] == cls
        theirs = load_file(tmp_path / name / "saelens_outputs.safetensors")
        torch.testing.assert_close(theirs["z"], ours[name][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(theirs["x_hat"], ours[name][1], rtol=1e-4, atol=1e-4)


def test_sparsify_loads_a_topk_skip_transcoder_and_agrees(tmp_path: Path) -> None:
    """sparsify's transcoders predict a target as wide as the input: 12 to 12, with skip."""
    assert PYTHON is not None
    norm, target = Normalizer(torch.randn(12), 0.37), Normalizer(torch.randn(12), 2.1)
    tc = trained_transcoder("topk", True, d_out=12)
    export_sparsify(tmp_path / "tc" / "sparsify", tc, norm, target)
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(3)) * 4 + 1
    save_file({"x": x}, tmp_path / "tc" / "inputs.safetensors")
    z, y_hat = _ours(tc, norm, target, x)
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "sparsify_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = load_file(tmp_path / "tc" / "sparsify_outputs.safetensors")
    torch.testing.assert_close(theirs["z"], z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs["x_hat"], y_hat, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="as wide as their input"):
        export_sparsify(tmp_path / "narrow", trained_transcoder("topk", False), norm, target)


def test_matryoshka_loss_and_gradients_equal_saelens_training_sae(tmp_path: Path) -> None:
    """Our Matryoshka BatchTopK step and SAELens' `MatryoshkaBatchTopKTrainingSAE` on the same
    weights and batch (float64, no dead latents so neither takes an AuxK term): the same codes,
    the same full and nested losses, the same gradients."""
    from trainer.dictionary.dictionaries import DictionaryConfig

    assert PYTHON is not None
    cfg = DictionaryConfig(arch="matryoshka", d_model=12, latents=48, k=4, widths=(6, 12, 24),
                           prefix_weight=1.0)  # SAELens sums the prefixes' losses
    for kernel in ("dense", "sparse"):
        sae = SparseDictionary(cfg, torch.Generator().manual_seed(3), kernel).double()
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            sae.W_enc.add_(torch.randn(sae.W_enc.shape, generator=g, dtype=torch.float64) * 0.3)
            sae.b_enc.copy_(torch.randn(48, generator=g, dtype=torch.float64) * 0.2)
            sae.b_dec.copy_(torch.randn(12, generator=g, dtype=torch.float64))
        x = torch.randn(64, 12, generator=g, dtype=torch.float64) * 2
        save_file({"W_enc": sae.W_enc.detach().contiguous(), "W_dec": sae.W_dec.detach(),
                   "b_enc": sae.b_enc.detach(), "b_dec": sae.b_dec.detach(), "x": x},
                  tmp_path / "inputs.safetensors")
        (tmp_path / "meta.json").write_text(json.dumps({"k": 4, "widths": list(cfg.widths)}))
        done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "saelens_matryoshka.py"),
                               str(tmp_path)], capture_output=True, text=True, check=False,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"levels": 4}
        theirs = load_file(tmp_path / "saelens.safetensors")
        out = sae(x)
        out.loss.backward()
        z = out.z.to_dense() if out.z.is_sparse else out.z
        torch.testing.assert_close(z, theirs["feature_acts"])
        assert out.terms["aux_loss"] == 0
        torch.testing.assert_close(out.terms["mse"], theirs["mse"])
        torch.testing.assert_close(out.terms["prefix_loss"], theirs["inner"])
        torch.testing.assert_close(out.loss, theirs["loss"])
        assert float(theirs["inner"]) > float(theirs["mse"])  # the nesting does count
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            grad = getattr(sae, name).grad
            assert grad is not None
            torch.testing.assert_close(grad, theirs[f"grad_{name}"], msg=f"{kernel} {name}")
