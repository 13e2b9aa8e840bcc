"""Each dictionary (trainer.dictionary.dictionaries) against a small eager reference
(loops over tokens, float64)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary, geometric_median

D, N, B = 4, 6, 5


def make(arch: str, kernel: str = "auto", **kw: object
         ) -> tuple[SparseDictionary, torch.Tensor]:
    torch.manual_seed(0)
    cfg = DictionaryConfig(arch=arch, d_model=D, latents=N, **kw)  # type: ignore[arg-type]
    sae = SparseDictionary(cfg, kernel=kernel).double()  # type: ignore[arg-type]
    with torch.no_grad():  # non-trivial biases, so the tied-bias algebra is exercised
        sae.b_enc.copy_(torch.randn(N) * 0.1)
        sae.b_dec.copy_(torch.randn(D) * 0.1)
    return sae, torch.randn(B, D, dtype=torch.float64)


def p(t: torch.Tensor) -> list:  # type: ignore[type-arg]
    """A parameter as plain Python numbers, for the loop references."""
    return t.detach().tolist()  # type: ignore[no-any-return]


def ref_pre(sae: SparseDictionary, x: torch.Tensor) -> list[list[float]]:
    w, be, bd, xs = p(sae.W_enc), p(sae.b_enc), p(sae.b_dec), p(x)
    return [[sum((xs[b][j] - bd[j]) * w[j][i] for j in range(D)) + be[i] for i in range(N)]
            for b in range(B)]


def ref_decode(sae: SparseDictionary, z: list[list[float]]) -> torch.Tensor:
    w, bd = p(sae.W_dec), p(sae.b_dec)
    return torch.tensor([[sum(z[b][i] * w[i][j] for i in range(N)) + bd[j] for j in range(D)]
                         for b in range(B)], dtype=torch.float64)


def dense(z: torch.Tensor) -> torch.Tensor:
    """Codes as a dense matrix (the sparse step returns them as a sparse COO tensor)."""
    return z.to_dense() if z.is_sparse else z


def ref_mse(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return sum(float(((x_hat[b] - x[b]) ** 2).sum()) for b in range(B)) / B


def test_relu_l1_matches_reference() -> None:
    sae, x = make("relu", l1=0.3)
    out = sae(x)
    z = [[max(0.0, p) for p in row] for row in ref_pre(sae, x)]
    x_hat = ref_decode(sae, z)
    torch.testing.assert_close(out.z, torch.tensor(z, dtype=torch.float64))
    torch.testing.assert_close(out.x_hat, x_hat)
    l1 = 0.3 * sum(sum(abs(v) for v in row) for row in z) / B
    assert out.loss.item() == pytest.approx(ref_mse(x_hat, x) + l1, rel=1e-12)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_topk_matches_reference(kernel: str) -> None:
    sae, x = make("topk", kernel, k=2)
    out = sae(x)
    z = []
    for row in ref_pre(sae, x):
        keep = sorted(range(N), key=lambda i: -row[i])[:2]
        z.append([max(0.0, row[i]) if i in keep else 0.0 for i in range(N)])
    torch.testing.assert_close(dense(out.z), torch.tensor(z, dtype=torch.float64))
    assert float(out.terms["aux_loss"]) == 0.0  # nothing is dead yet
    assert out.loss.item() == pytest.approx(ref_mse(ref_decode(sae, z), x), rel=1e-12)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_batchtopk_matches_reference_and_learns_its_threshold(kernel: str) -> None:
    sae, x = make("batchtopk", kernel, k=2)
    out = sae(x)
    pre = ref_pre(sae, x)
    ranked = sorted(((max(0.0, pre[b][i]), b, i) for b in range(B) for i in range(N)),
                    reverse=True)[:2 * B]
    z = [[0.0] * N for _ in range(B)]
    for v, b, i in ranked:
        z[b][i] = v
    torch.testing.assert_close(dense(out.z), torch.tensor(z, dtype=torch.float64))
    smallest = min(v for v, _, _ in ranked if v > 0)
    assert float(sae.threshold) == pytest.approx(smallest)  # first batch sets it
    inference = sae.encode(x)  # per token, against the threshold, no batch coupling
    want = [[max(0.0, p) if p > smallest else 0.0 for p in row] for row in pre]
    torch.testing.assert_close(inference, torch.tensor(want, dtype=torch.float64))
    x_hat, fired = sae.reconstruct(x)  # the same codes, without a (tokens, latents) matrix
    torch.testing.assert_close(x_hat, ref_decode(sae, want))
    assert fired.tolist() == [any(row[i] > 0 for row in want) for i in range(N)]


def test_jumprelu_forward_and_straight_through_gradients() -> None:
    bw = 0.5
    sae, x = make("jumprelu", l0=0.2, jump_bandwidth=bw, jump_init_threshold=0.05)
    out = sae(x)
    theta = [math.exp(t) for t in p(sae.log_threshold)]
    pre = ref_pre(sae, x)
    z = [[p if p > theta[i] else 0.0 for i, p in enumerate(row)] for row in pre]
    torch.testing.assert_close(out.z, torch.tensor(z, dtype=torch.float64))
    out.loss.backward()
    # dLoss/dz by hand (mse part), then the paper's estimators for d/dtheta.
    x_hat = ref_decode(sae, z)
    wd, xs, xh = p(sae.W_dec), p(x), p(x_hat)
    dz = [[sum(2 * (xh[b][j] - xs[b][j]) * wd[i][j] for j in range(D)) / B for i in range(N)]
          for b in range(B)]

    def kernel(u: float) -> float:
        return 1.0 if -0.5 < u < 0.5 else 0.0

    for i in range(N):
        d_theta = sum(dz[b][i] * -(theta[i] / bw) * kernel((pre[b][i] - theta[i]) / bw)
                      + 0.2 / B * -(1 / bw) * kernel((pre[b][i] - theta[i]) / bw)
                      for b in range(B))
        assert sae.log_threshold.grad is not None
        assert float(sae.log_threshold.grad[i]) == pytest.approx(d_theta * theta[i], abs=1e-12)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_auxk_reconstructs_the_residual_from_dead_latents(kernel: str) -> None:
    sae, x = make("topk", kernel, k=1, aux_k=2, aux_coef=0.5, dead_after_tokens=1)
    sae.tokens_since_fired.fill_(5)
    sae.tokens_since_fired[0] = 0  # latent 0 is alive; the rest are dead
    out = sae(x)
    pre, wd, xs, xh = ref_pre(sae, x), p(sae.W_dec), p(x), p(out.x_hat)
    total = 0.0
    for b in range(B):
        dead = sorted(range(1, N), key=lambda i: -pre[b][i])[:2]
        aux = [max(0.0, pre[b][i]) if i in dead else 0.0 for i in range(N)]
        for j in range(D):
            rec = sum(aux[i] * wd[i][j] for i in range(N))
            total += (rec - (xs[b][j] - xh[b][j])) ** 2
    assert float(out.terms["aux_loss"]) == pytest.approx(0.5 * total / B, rel=1e-10)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_decoder_rows_stay_unit_norm(arch: str) -> None:
    sae, x = make(arch, k=2, l1=0.1, l0=0.1)
    opt = torch.optim.Adam(sae.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        sae(x).loss.backward()
        sae.remove_parallel_grad()
        assert sae.W_dec.grad is not None
        along = (sae.W_dec.grad * sae.W_dec).sum(1)
        torch.testing.assert_close(along, torch.zeros(N, dtype=torch.float64))
        opt.step()
        sae.normalize_decoder()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N, dtype=torch.float64))


def test_initialisation_and_bias() -> None:
    sae, _ = make("relu")
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)  # encoder = decoder transpose
    cluster = torch.randn(200, D, dtype=torch.float64) * 0.01 + 3.0
    outliers = torch.full((20, D), 100.0, dtype=torch.float64)
    sample = torch.cat([cluster, outliers])
    sae.init_bias(sample, "geometric_median")
    assert (sae.b_dec - 3.0).abs().max() < 0.5  # the median ignores the outliers...
    sae.init_bias(sample, "mean")
    assert (sae.b_dec - 3.0).abs().min() > 5  # ...the mean does not
    line = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    assert float(geometric_median(line)[0]) == pytest.approx(1.0, abs=1e-4)


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"--k must be in \[1, latents=6\]"):
        DictionaryConfig(arch="topk", d_model=4, latents=6, k=7)
    with pytest.raises(ValueError, match="--k"):
        DictionaryConfig(arch="batchtopk", d_model=4, latents=6)
    with pytest.raises(ValueError, match="l1"):
        DictionaryConfig(arch="relu", d_model=4, latents=6, l1=-1)


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_matryoshka_prefix_weight_scales_each_inner_prefix_loss(kernel: str) -> None:
    """`prefix_weight` w: loss = ‖x − x̂‖² + w Σ_{inner prefixes} ‖x − x̂_prefix‖², each prefix's
    error from a loop over its latents (AuxK is 0: nothing is dead yet)."""
    for w in (1.0, 0.25, 0.0):
        sae, x = make("matryoshka", kernel, k=2, widths=(2, 4), prefix_weight=w)
        out = sae(x)
        z = (out.z.to_dense() if out.z.is_sparse else out.z).detach()
        inner = sum(((x - (sae.b_dec + z[:, :m] @ sae.W_dec[:m])) ** 2).sum(-1).mean()
                    for m in (2, 4))
        assert float(out.terms["aux_loss"]) == 0
        torch.testing.assert_close(out.terms["prefix_loss"], w * inner.detach())
        torch.testing.assert_close(out.loss, out.terms["mse"] + w * inner)
    default = DictionaryConfig(arch="matryoshka", d_model=D, latents=512, k=2)
    assert (default.widths, default.prefix_weight) == ((128, 512), 0.1)  # the swept defaults
    with pytest.raises(ValueError, match="--prefix-weight must be >= 0"):
        DictionaryConfig(arch="matryoshka", d_model=D, latents=N, k=2, prefix_weight=-1)


def test_a_matryoshka_saved_before_prefix_weight_loads_with_the_sum() -> None:
    """Files written before `prefix_weight` existed trained with every prefix at weight 1
    (the sum): loading them, and resuming their runs, keeps that, not today's default."""
    from trainer.training.config import TrainConfig

    saved = dataclasses.asdict(DictionaryConfig(arch="matryoshka", d_model=8, latents=16, k=2))
    del saved["prefix_weight"]
    assert DictionaryConfig.from_saved(saved).prefix_weight == 1.0
    assert DictionaryConfig.from_saved({**saved, "prefix_weight": 0.5}).prefix_weight == 0.5
    fresh = DictionaryConfig(arch="matryoshka", d_model=8, latents=16, k=2)
    assert fresh.prefix_weight != 1.0  # today's default differs: the test means something
    run = TrainConfig(store=("s",), hook=("h",), out="o", arch="matryoshka",
                      latents=(64,)).to_dict()
    del run["prefix_weight"]
    assert TrainConfig.from_dict(run).prefix_weight == 1.0
    assert TrainConfig.from_dict({**run, "prefix_weight": None}).prefix_weight is None
