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

from actstore.loader.loader import Normalizer
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import export_saelens, export_sparsify

PYTHON = os.environ.get("ACTSTORE_SAELENS_PYTHON")
pytestmark = [pytest.mark.saelens,
              pytest.mark.skipif(not PYTHON, reason="ACTSTORE_SAELENS_PYTHON not set "
                                 "(scripts/install_saelens.sh makes that environment)")]
ARCHS = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE",
         "jumprelu": "JumpReLUSAE"}


def trained_like(arch: str, d: int = 12, n: int = 40) -> SparseDictionary:
    """A dictionary with every parameter away from its initial value, as after training."""
    cfg = DictionaryConfig(arch=arch, d_model=d, latents=n, k=5, l1=0.1, l0=0.1)  # type: ignore[arg-type]
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sae.W_enc.add_(torch.randn(sae.W_enc.shape, generator=g) * 0.2)
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.2)
        sae.b_dec.copy_(torch.randn(d, generator=g))
        sae.threshold.fill_(0.15)
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.log(torch.rand(n, generator=g) * 0.3 + 0.01))
    return sae


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
