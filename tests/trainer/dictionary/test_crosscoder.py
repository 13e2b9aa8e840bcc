"""Crosscoders (trainer.dictionary.crosscoder): the module's loss and gradients against the
definition written site by site (an encoder and a decoder per site, Lindsey et al.'s
decoder-norm-weighted L1), the decoder constraint, relative norms, and the files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actstore.loader.delivery import Normalizer
from trainer.dictionary.crosscoder import relative_norms, site_norms
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import load_crosscoder, load_dictionary, save_crosscoder

SITES, N, B = (6, 4, 5), 20, 16


def make(arch: str, kernel: str = "auto", seed: int = 1) -> SparseDictionary:
    """A crosscoder over three sites of different widths, every parameter moved off its
    initial value by seeded noise."""
    cfg = DictionaryConfig(arch=arch, d_model=sum(SITES), latents=N, k=3, l1=0.05,  # type: ignore[arg-type]
                           kind="crosscoder", sites=SITES, dead_after_tokens=10 * B)
    cc = SparseDictionary(cfg, torch.Generator().manual_seed(seed), kernel)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for p in cc.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return cc


def per_site(cc: SparseDictionary, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The definition, site by site: pre = Σ_l (x_l - b_l) W_enc_l + b_enc; x̂_l = z W_dec_l
    + b_l; the squared errors summed over sites; relu: λ Σ_i z_i Σ_l ‖W_dec_l[i]‖; topk:
    the k largest pre-activations of each token."""
    cut = torch.tensor(SITES).cumsum(0).tolist()
    bounds = list(zip([0, *cut[:-1]], cut, strict=True))
    w_enc = [cc.W_enc[a:b] for a, b in bounds]
    w_dec = [cc.W_dec[:, a:b] for a, b in bounds]
    b_dec = [cc.b_dec[a:b] for a, b in bounds]
    pre = sum(((xl - bl) @ wl for xl, bl, wl in zip(x, b_dec, w_enc, strict=True)),
              start=cc.b_enc)
    if cc.cfg.arch == "relu":
        z = torch.relu(pre)
    else:
        top = torch.topk(pre, cc.cfg.k or 1, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    mse = sum(((xl - (z @ wl + bl)) ** 2).sum(1) for xl, wl, bl in
              zip(x, w_dec, b_dec, strict=True)).mean()
    out = {"mse": mse}
    if cc.cfg.arch == "relu":
        weights = sum(torch.linalg.vector_norm(wl, dim=1) for wl in w_dec)
        out["l1_loss"] = cc.cfg.l1 * (z * weights).sum(1).mean()
    return out


@pytest.mark.parametrize(("arch", "kernel"), [("relu", "dense"), ("topk", "dense"),
                                              ("topk", "sparse")])
def test_loss_and_gradients_equal_the_definition_site_by_site(arch: str, kernel: str) -> None:
    torch.manual_seed(0)
    x = [torch.randn(B, w, dtype=torch.float64) for w in SITES]
    ours = make(arch, kernel).double()
    ref = make(arch, kernel).double()
    out = ours(torch.cat(x, 1))
    want = per_site(ref, x)
    for name, value in want.items():
        torch.testing.assert_close(out.terms[name], value.detach(), msg=name)
    out.loss.backward()
    sum(want.values()).backward()  # type: ignore[union-attr]
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_lindsey_decoders_keep_their_norms_and_topk_rows_stay_unit() -> None:
    relu, topk = make("relu"), make("topk")
    before = relu.W_dec.detach().clone()
    for cc in (relu, topk):
        cc(torch.randn(B, sum(SITES))).loss.backward()
        cc.remove_parallel_grad()
        cc.normalize_decoder()
    assert torch.equal(relu.W_dec.detach(), before)  # the penalty fixes the scale itself
    torch.testing.assert_close(topk.W_dec.norm(dim=1), torch.ones(N))


def test_relative_norms_are_each_sites_share() -> None:
    w = torch.zeros(3, 7)
    w[0, :3] = 2.0        # site 0 only
    w[1, 3:] = 1.0        # site 1 only
    w[2, 0], w[2, 3] = 3.0, 1.0
    shares = relative_norms(w, (3, 4))
    norms = site_norms(w, (3, 4))
    torch.testing.assert_close(norms[0], torch.tensor([12 ** 0.5, 0.0]))
    torch.testing.assert_close(shares, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.75, 0.25]]))
    assert relative_norms(torch.zeros(1, 7), (3, 4)).tolist() == [[0.5, 0.5]]


def test_files_round_trip_with_a_normaliser_per_site(tmp_path: Path) -> None:
    cc = make("batchtopk")
    cc.threshold.fill_(0.2)
    norms = [Normalizer(torch.randn(w), s) for w, s in zip(SITES, (0.5, 2.0, 3.0), strict=True)]
    save_crosscoder(tmp_path / "cc", cc, norms, {"hook": ["a", "b", "c"]})
    back, back_norms, meta = load_crosscoder(tmp_path / "cc")
    assert back.cfg == cc.cfg
    assert meta["source"]["hook"] == ["a", "b", "c"]
    for a, b in zip(norms, back_norms, strict=True):
        assert a.scale == b.scale
        assert torch.equal(a.mean, b.mean)  # type: ignore[arg-type]
    x = torch.randn(B, sum(SITES))
    torch.testing.assert_close(back.reconstruct(x)[0], cc.reconstruct(x)[0])
    with pytest.raises(ValueError, match="load it with load_crosscoder"):
        load_dictionary(tmp_path / "cc")


@pytest.mark.parametrize(("change", "message"), [
    ({"sites": (10,)}, "a crosscoder has sites"), ({"sites": (7, 4)}, "a crosscoder has sites"),
    ({"kind": "sae"}, "a crosscoder has sites"), ({"sites": ()}, "a crosscoder has sites")])
def test_bad_sites_are_refused(change: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"arch": "topk", "d_model": 10, "latents": 8, "k": 2,
                               "kind": "crosscoder", "sites": (6, 4)}
    with pytest.raises(ValueError, match=message):
        DictionaryConfig(**{**base, **change})  # type: ignore[arg-type]
