"""Dictionary files (trainer.dictionary.export): the SAELens export acts on raw
activations as the dictionary does, and our own format round-trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from actstore.loader.delivery import Normalizer
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import export_saelens, load_dictionary, save_dictionary


def raw_codes(arch: str, w: dict[str, torch.Tensor], cfg: dict[str, Any],
              x: torch.Tensor) -> torch.Tensor:
    """SAELens' inference maths, written out: what its loaders compute from the export."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return pre * (pre > w["threshold"])


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelens_export_acts_on_raw_activations(arch: str, tmp_path: Path) -> None:
    d, n = 6, 10
    cfg = DictionaryConfig(arch=arch, d_model=d, latents=n, k=3, l1=0.1, l0=0.1)
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_()
        sae.threshold.fill_(0.05)
    norm = Normalizer(torch.randn(d), 0.37)
    source = {"model": "m", "hook": "h.1", "context_length": 8, "dataset": "ds",
              "bos_policy": "keep"}
    save_dictionary(tmp_path, sae, norm, source)
    export_saelens(tmp_path / "saelens", sae, norm, source)
    w = load_file(tmp_path / "saelens" / "sae_weights.safetensors")
    scfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    expected_keys = {"W_enc", "W_dec", "b_enc", "b_dec"} | (
        {"threshold"} if arch in ("jumprelu", "batchtopk") else set())
    assert set(w) == expected_keys
    assert w["W_enc"].shape == (d, n)
    assert w["W_dec"].shape == (n, d)
    assert (scfg["d_in"], scfg["d_sae"], scfg["metadata"]["hook_name"]) == (d, n, "h.1")
    assert scfg["metadata"]["sae_lens_version"].startswith("6.")  # SAELens 6 reads these
    assert scfg["normalize_activations"] == "none"
    x = torch.randn(32, d) * 4 + 1
    with torch.no_grad():
        z = sae.encode(norm.apply(x))
        want = norm.invert(sae.decode(z))
    z_raw = raw_codes(scfg["architecture"], w, scfg, x)
    torch.testing.assert_close(z_raw, z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_raw @ w["W_dec"] + w["b_dec"], want, rtol=1e-4, atol=1e-4)
    again, norm_again, _ = load_dictionary(tmp_path)  # our own format round-trips
    for (k, a), b in zip(sae.state_dict().items(), again.state_dict().values(), strict=True):
        if k != "tokens_since_fired":
            assert torch.equal(a, b), k
    assert norm_again.scale == norm.scale
    assert torch.equal(norm_again.mean, norm.mean)
