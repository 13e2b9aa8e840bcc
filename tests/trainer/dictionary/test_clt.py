"""Cross-layer transcoders (trainer.dictionary.clt, clt_export): the module against the
definition computed pair by pair, its dense and sparse steps against each other, its memory
model against its parameters, its files read back by us and by circuit-tracer itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actstore.loader.delivery import Normalizer
from trainer.dictionary.clt import CrossLayerTranscoder
from trainer.dictionary.clt_export import export_circuit_tracer_clt, load_clt, save_clt
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.memory import F32, dictionary_memory

L, D, N, B = 4, 10, 24, 32
PYTHON = os.environ.get("ACTSTORE_CIRCUIT_TRACER_PYTHON")


def make(arch: str, *, kernel: str = "auto", seed: int = 1, d_out: int = D,
         layers: int = L) -> CrossLayerTranscoder:
    """A CLT with every parameter moved off its initial value by seeded noise."""
    cfg = DictionaryConfig(arch=arch, d_model=D, latents=N, k=3, l1=0.05, l0=0.05,  # type: ignore[arg-type]
                           kind="clt", layers=layers, d_out=d_out, dead_after_tokens=B)
    clt = CrossLayerTranscoder(cfg, torch.Generator().manual_seed(seed), kernel)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for p in clt.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        clt.normalize_decoder()
        clt.threshold.fill_(0.1)
    return clt


def by_pairs(clt: CrossLayerTranscoder, x: torch.Tensor) -> torch.Tensor:
    """y_j = Σ_{l ≤ j} act(x_l W_enc[l] + b_enc[l]) W_dec[l→j] + b_dec[j], one pair at a
    time from the definition (TopK and ReLU)."""
    cfg, out = clt.cfg, []
    codes = []
    for i in range(L):
        pre = x[:, i] @ clt.W_encs[i] + clt.b_encs[i]
        if cfg.arch == "topk":
            top = torch.topk(pre, cfg.k or 1, dim=1)
            z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        else:
            z = pre.relu()
        codes.append(z)
    for j in range(L):
        y = clt.b_dec[j].clone()
        for i in range(j + 1):
            w = clt.W_decs[i][:, (j - i) * cfg.out_width:(j - i + 1) * cfg.out_width]
            y = y + codes[i] @ w
        out.append(y)
    return torch.stack(out, 1)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_a_clt_is_the_sum_over_its_layer_pairs(arch: str) -> None:
    clt = make(arch, d_out=7)
    x = torch.randn(B, L, D, generator=torch.Generator().manual_seed(0))
    want = by_pairs(clt, x)
    out = clt(x, torch.zeros(B, L, 7))
    torch.testing.assert_close(out.x_hat, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clt.reconstruct(x)[0], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["mse"], (want ** 2).sum((1, 2)).mean())
    if arch == "topk":  # k in every layer, for every token
        assert torch.equal(out.fired.sum(0), torch.full((L,), 3 * B))


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_the_sparse_step_equals_the_dense_one(arch: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(B, L, D, generator=gen), torch.randn(B, L, D, generator=gen)
    results = []
    for kernel in ("dense", "sparse"):
        clt = make(arch, kernel=kernel).double()
        clt.tokens_since_fired[::3] = 10 * B  # dead latents in every layer: AuxK acts
        out = clt(x.double(), y.double())
        out.loss.backward()
        assert out.terms["aux_loss"] > 0
        results.append((out, {k: p.grad for k, p in clt.named_parameters()}, clt.threshold))
    (a, ga, ta), (b, gb, tb) = results
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.fired, b.fired)
    torch.testing.assert_close(ta, tb)
    assert ga.keys() == gb.keys()
    for key in ga:
        torch.testing.assert_close(ga[key], gb[key], msg=key)


def test_the_decoder_constraint_holds_per_latent_over_all_its_targets() -> None:
    clt = make("relu")
    out = clt(torch.randn(B, L, D), torch.randn(B, L, D))
    out.loss.backward()
    clt.remove_parallel_grad()
    for w in clt.W_decs:  # no gradient along a latent's (concatenated) decoder
        assert w.grad is not None
        assert (w.grad * w).sum(1).abs().max() < 1e-5
        w.data.mul_(3)
    clt.normalize_decoder()
    for w in clt.W_decs:
        torch.testing.assert_close(w.norm(dim=1), torch.ones(N))


def test_the_memory_model_counts_every_parameter_and_the_square_growth() -> None:
    for arch in ("topk", "jumprelu"):
        clt = make(arch, d_out=7, layers=5)
        plan = dictionary_memory(d=D, latents=N, k=3, batch=B, arch=arch, d_out=7, layers=5)
        assert plan.parameters == F32 * sum(p.numel() for p in clt.parameters())
    # decoders grow as L(L+1)/2: eight layers hold 36 decoders where one holds 1
    one, eight = (dictionary_memory(d=D, latents=1000, k=3, batch=B, layers=n).parameters
                  for n in (1, 8))
    dec = 1000 * D * F32
    assert eight - 8 * (one - dec) == 36 * dec


def test_our_files_read_back_to_the_same_transcoder(tmp_path: Path) -> None:
    for arch in ("jumprelu", "batchtopk"):
        clt = make(arch)
        g = torch.Generator().manual_seed(5)
        norms = [Normalizer(torch.randn(D, generator=g), 0.5 + i) for i in range(L)]
        targets = [Normalizer(torch.randn(D, generator=g), 2.0 - i / 4) for i in range(L)]
        save_clt(tmp_path / arch, clt, norms, targets, {"hook": ["a"] * L})
        back, n2, t2, meta = load_clt(tmp_path / arch)
        x = torch.randn(B, L, D, generator=g)
        torch.testing.assert_close(back.reconstruct(x)[0], clt.reconstruct(x)[0])
        assert [n.scale for n in n2] == [n.scale for n in norms]
        for a, b in zip(t2, targets, strict=True):
            assert a.mean is not None
            assert b.mean is not None
            torch.testing.assert_close(a.mean, b.mean)
        tensors = load_file(tmp_path / arch / "model.safetensors")  # no code of ours needed
        assert tensors["W_dec_1"].shape == (N, L - 1, D)
        assert tensors["W_enc_3"].shape == (D, N)
        assert tensors["b_dec"].shape == (L, D)
        assert meta["dictionary"]["layers"] == L


@pytest.mark.circuit_tracer
@pytest.mark.skipif(not PYTHON, reason="ACTSTORE_CIRCUIT_TRACER_PYTHON not set "
                    "(scripts/install_circuit_tracer.sh makes that environment)")
def test_circuit_tracer_loads_the_clt_and_agrees(tmp_path: Path) -> None:
    assert PYTHON is not None
    x = torch.randn(L, 48, D, generator=torch.Generator().manual_seed(3)) * 3 + 1
    ours = {}
    for arch in ("relu", "jumprelu", "batchtopk"):
        clt = make(arch)
        g = torch.Generator().manual_seed(7)
        norms = [Normalizer(torch.randn(D, generator=g), 0.4 + i / 5) for i in range(L)]
        targets = [Normalizer(torch.randn(D, generator=g), 1.5 + i) for i in range(L)]
        export_circuit_tracer_clt(tmp_path / arch / "circuit_tracer", clt, norms, targets,
                                  model_name="m")
        save_file({"x": x}, tmp_path / arch / "inputs.safetensors")
        xn = torch.stack([n.apply(x[i]) for i, n in enumerate(norms)], 1)  # (pos, L, d)
        y_n = clt.reconstruct(xn)[0]
        y = torch.stack([t.invert(y_n[:, j]) for j, t in enumerate(targets)])
        z = torch.zeros(L, 48, N)
        for i in range(L):
            sel = clt.layer_outputs(i, xn[:, i])[1]
            z[i, sel.rows, sel.cols] = sel.values
        assert 48 < int((z > 0).sum()) < z.numel() // 2  # real, sparse codes
        ours[arch] = (z, y)
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "circuit_tracer_load.py"),
                           str(tmp_path)], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for arch, (z, y) in ours.items():
        assert loaded[arch] == {
            "layers": L, "d_transcoder": N, "clt": True, "skip": False,
            "input_hook": "ln2.hook_normalized", "output_hook": "hook_mlp_out",
            "scan": "circuit_tracer", "model_name": "m",
            "activations": ["relu" if arch == "relu" else "jumprelu"] * L}
        theirs = load_file(tmp_path / arch / "circuit_tracer_outputs.safetensors")
        for path in ("", "_sparse"):
            torch.testing.assert_close(theirs["z" + path], z, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(theirs["y_hat" + path], y, rtol=1e-4, atol=1e-4)
        for i in range(L):  # the files are what circuit-tracer writes itself
            for kind in ("W_enc", "W_dec"):
                name = f"{kind}_{i}.safetensors"
                mine = load_file(tmp_path / arch / "circuit_tracer" / name)
                resaved = load_file(tmp_path / arch / "resaved" / name)
                assert {k: v.shape for k, v in mine.items()} == {
                    k: v.shape for k, v in resaved.items()}


def test_circuit_tracer_export_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    one = [Normalizer(None, 1.0)] * L
    with pytest.raises(ValueError, match="relu, jumprelu and batchtopk CLTs, not topk"):
        export_circuit_tracer_clt(tmp_path / "a", make("topk"), one, one)
    with pytest.raises(ValueError, match="as wide as their inputs: 10 -> 7"):
        export_circuit_tracer_clt(tmp_path / "b", make("relu", d_out=7), one, one)
    assert not any(tmp_path.iterdir())
