"""Transcoders and skip transcoders (trainer.dictionary.dictionaries, kind="transcoder")
against an eager reference written from the definition: z = act(x W_enc + b_enc),
y_hat = z W_dec + b_dec [+ x W_skip], the loss the squared error on the target y."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from actstore.loader.delivery import Normalizer
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import folded, load_dictionary, save_dictionary, target_normalizer
from trainer.training.ensemble import adam, train_step

D_IN, D_OUT, N, B = 6, 4, 10, 7
KNOBS = {"relu": {"l1": 0.3}, "topk": {"k": 3}, "batchtopk": {"k": 3}, "jumprelu": {"l0": 0.2}}


def make(arch: str, skip: bool, kernel: str = "auto", d_out: int = D_OUT
         ) -> tuple[SparseDictionary, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    cfg = DictionaryConfig(arch=arch, d_model=D_IN, latents=N, kind="transcoder",  # type: ignore[arg-type]
                           d_out=d_out, skip=skip, **KNOBS[arch])  # type: ignore[arg-type]
    tc = SparseDictionary(cfg, kernel=kernel).double()  # type: ignore[arg-type]
    with torch.no_grad():  # every parameter non-trivial, so each term is exercised
        tc.b_enc.copy_(torch.randn(N) * 0.1)
        tc.b_dec.copy_(torch.randn(d_out) * 0.1)
        if skip:
            tc.W_skip.copy_(torch.randn(D_IN, d_out) * 0.1)
    return tc, torch.randn(B, D_IN, dtype=torch.float64), torch.randn(B, d_out,
                                                                       dtype=torch.float64)


def reference(tc: SparseDictionary, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and prediction token by token, in float64, from the definition."""
    cfg = tc.cfg
    pre = torch.stack([x[b] @ tc.W_enc + tc.b_enc for b in range(len(x))]).detach()
    if cfg.arch == "relu":
        z = pre.clamp_min(0)
    elif cfg.arch == "topk":
        z = torch.zeros_like(pre)
        for b in range(len(x)):
            top = torch.topk(pre[b], cfg.k or 1)
            z[b, top.indices] = top.values.clamp_min(0)
    elif cfg.arch == "batchtopk":
        flat = pre.clamp_min(0).flatten()
        keep = torch.topk(flat, (cfg.k or 1) * len(x)).indices
        z = torch.zeros_like(flat).index_copy_(0, keep, flat[keep]).view_as(pre)
    else:
        z = pre * (pre > tc.log_threshold.exp().detach())
    y_hat = torch.stack([z[b] @ tc.W_dec.detach() + tc.b_dec.detach() + (
        x[b] @ tc.W_skip.detach() if cfg.skip else 0) for b in range(len(x))])
    return z, y_hat


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_the_prediction_and_loss_follow_the_definition(arch: str, skip: bool) -> None:
    tc, x, y = make(arch, skip, kernel="dense")
    z_ref, y_ref = reference(tc, x)
    out = tc(x, y)
    torch.testing.assert_close(out.x_hat.detach(), y_ref)
    torch.testing.assert_close(out.terms["mse"], ((y_ref - y) ** 2).sum(-1).mean())
    if arch != "batchtopk":  # whose inference codes use its learned threshold, not the batch
        torch.testing.assert_close(tc.encode(x).detach(), z_ref)
    if arch == "relu":
        torch.testing.assert_close(out.terms["l1_loss"], 0.3 * z_ref.abs().sum(-1).mean())
    assert out.x_hat.shape == (B, D_OUT)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_the_sparse_step_trains_a_transcoder_as_the_dense_one(arch: str, skip: bool) -> None:
    """Same start, same batches: the parameters after three optimiser steps agree."""
    dense, x, y = make(arch, skip, kernel="dense")
    sparse = copy.deepcopy(dense)
    sparse.kernel = "sparse"
    for tc in (dense, sparse):
        opt = adam(1e-2)(tc)
        for _ in range(3):
            train_step(tc, tc, opt, x, 1.0, y=y)
    for (name, a), (_, b) in zip(dense.named_parameters(), sparse.named_parameters(),
                                 strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_inference_predicts_the_target_with_the_skip(kernel: str) -> None:
    tc, x, _ = make("topk", True, kernel=kernel)
    y_hat, fired = tc.reconstruct(x.view(1, B, D_IN))
    torch.testing.assert_close(y_hat.view(B, D_OUT), reference(tc, x)[1])
    assert fired.shape == (N,)


def test_a_transcoder_needs_its_target_and_an_sae_refuses_one() -> None:
    tc, x, _ = make("relu", False)
    with pytest.raises(ValueError, match="predicts a target"):
        tc(x)
    sae = SparseDictionary(DictionaryConfig(arch="relu", d_model=D_IN, latents=N, l1=0.1))
    with pytest.raises(ValueError, match="reconstructs its input"):
        sae(x.float(), x.float())
    with pytest.raises(ValueError, match="transcoder"):
        DictionaryConfig(arch="relu", d_model=D_IN, latents=N, l1=0.1, skip=True)


def test_the_fold_onto_raw_activations_equals_normalise_predict_unnormalise(
        tmp_path: Path) -> None:
    """Folded weights on raw x give the target's raw prediction, and the saved files load
    back to the same dictionary and normalisers."""
    tc, x, _ = make("relu", True)
    tc = tc.float()
    norm = Normalizer(torch.randn(D_IN), 0.7)
    target = Normalizer(torch.randn(D_OUT), 1.9)
    raw = x.float() * 3 + 1
    want = target.invert(tc.reconstruct(norm.apply(raw))[0])
    w = folded(tc, norm, target)
    got = torch.relu(raw @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"] + raw @ w["W_skip"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    save_dictionary(tmp_path / "tc", tc, norm, {"hook": "a", "target_hook": "b"}, target)
    again, norm_again, cfg = load_dictionary(tmp_path / "tc")
    assert again.cfg == tc.cfg
    assert cfg["source"]["target_hook"] == "b"
    torch.testing.assert_close(target.invert(again.reconstruct(norm_again.apply(raw))[0]), want)
    assert target_normalizer(tmp_path / "tc").scale == pytest.approx(1.9)


def test_exports_a_peer_cannot_load_are_refused_before_writing(tmp_path: Path) -> None:
    """SAELens has no TopK transcoder; sparsify's predict a target as wide as their input."""
    from trainer.dictionary.export import export_saelens, export_sparsify

    tc, _, _ = make("topk", False)
    norm, target = Normalizer(None, 1.0), Normalizer(None, 1.0)
    with pytest.raises(ValueError, match="no TopK transcoder"):
        export_saelens(tmp_path / "saelens", tc.float(), norm, {}, target)
    with pytest.raises(ValueError, match="as wide as their input"):
        export_sparsify(tmp_path / "sparsify", tc.float(), norm, target)
    assert not any(tmp_path.iterdir())
