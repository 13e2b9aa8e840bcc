"""The sparse step (trainer/kernels) against the dense one: values, every gradient, the
counters, AuxK, several steps of training, and that no (batch, latents) tensor is made."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.kernels import selection
from trainer.training.config import TrainConfig
from trainer.training.ensemble import Ensemble, adam

D, N, B = 12, 90, 24


@pytest.fixture(autouse=True)
def narrow_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 7 latent columns (the last one 6 wide), so every running merge is exercised."""
    monkeypatch.setattr(selection, "BLOCK_ELEMENTS", B * 7)


def pair(arch: str, device: str = "cpu", dtype: torch.dtype = torch.float64,
         **kw: Any) -> tuple[SparseDictionary, SparseDictionary]:
    """The same dictionary under both kernels, with non-trivial biases."""
    cfg = DictionaryConfig(arch=arch, d_model=D, latents=N, k=3, **kw)  # type: ignore[arg-type]
    made = []
    for kernel in ("dense", "sparse"):
        sae = SparseDictionary(cfg, torch.Generator().manual_seed(1), kernel)  # type: ignore[arg-type]
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            sae.b_enc.copy_(torch.randn(N, generator=g) * 0.2)
            sae.b_dec.copy_(torch.randn(D, generator=g) * 0.2)
        made.append(sae.to(device=device, dtype=dtype))
    return made[0], made[1]


def rows(device: str = "cpu", dtype: torch.dtype = torch.float64, seed: int = 3) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed)).to(device, dtype)


def assert_same_step(dense: SparseDictionary, sparse: SparseDictionary, x: torch.Tensor,
                     **tol: float) -> None:
    a, b = dense(x), sparse(x)
    a.loss.backward()
    b.loss.backward()
    torch.testing.assert_close(b.x_hat, a.x_hat, **tol)
    torch.testing.assert_close(b.z.to_dense(), a.z, **tol)
    for name, value in a.terms.items():
        torch.testing.assert_close(b.terms[name], value, **tol)
    assert torch.equal(a.fired, b.fired)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters(), strict=True):
        assert p.grad is not None, name
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, **tol, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(sparse.threshold, dense.threshold, **tol)
    assert torch.equal(sparse.tokens_since_fired, dense.tokens_since_fired)


def kill(*saes: SparseDictionary) -> None:
    """Every third latent dead: AuxK has work to do."""
    for sae in saes:
        sae.tokens_since_fired[::3] = sae.cfg.dead_after_tokens


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("dead", [False, True], ids=["alive", "auxk"])
def test_sparse_step_equals_dense(arch: str, dead: bool) -> None:
    dense, sparse = pair(arch, dead_after_tokens=100, aux_k=5)
    if dead:
        kill(dense, sparse)
    assert_same_step(dense, sparse, rows())
    if dead:
        assert float(dense(rows()).terms["aux_loss"]) > 0  # the comparison covered AuxK


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_with_either_kernel_gives_the_same_parameters(arch: str) -> None:
    """Ten Adam steps with the decoder constraint; latents die (short window) and AuxK acts."""
    cfg = DictionaryConfig(arch=arch, d_model=D, latents=N, k=3,  # type: ignore[arg-type]
                           dead_after_tokens=3 * B)
    runs = [Ensemble([cfg], adam(3e-3), seed=5, kernel=kernel).to("cpu", torch.float64)
            for kernel in ("dense", "sparse")]
    for step in range(10):
        x = rows(seed=step) * 2
        outs = [run.step(x)[0] for run in runs]
        torch.testing.assert_close(outs[1].loss, outs[0].loss)
    assert float(outs[0].terms["aux_loss"]) > 0
    dense, sparse = (run.members[0] for run in runs)
    for (name, p), q in zip(dense.state_dict().items(), sparse.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(q, p, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_inference_reconstruction_equals_dense(arch: str) -> None:
    dense, sparse = pair(arch)
    for sae in (dense, sparse):
        sae.threshold.fill_(2.0)  # some latents fire on none of the rows
    x = rows().view(4, B // 4, D)  # (contexts, positions, d) as the splicer passes it
    (a, seen_a), (b, seen_b) = dense.reconstruct(x), sparse.reconstruct(x)
    torch.testing.assert_close(b, a)
    assert torch.equal(seen_a, seen_b)
    assert 0 < int(seen_a.sum()) < N


class LargestTensor(TorchDispatchMode):
    """The most elements of any dense tensor an operator returns (a sparse tensor's numel is
    its dense shape's, not what it holds)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_sparse_step_never_makes_a_batch_by_latents_tensor(kernel: str) -> None:
    """Forward and backward with AuxK: the sparse step's largest tensor is a parameter-sized
    one or a tile, never (batch, latents); the dense step's is (the test can fail)."""
    d, n, batch = 4, 512, 256  # batch·n = 131,072 > n·d = 2,048 and > a tile of 256·7
    cfg = DictionaryConfig(arch="topk", d_model=d, latents=n, k=3, dead_after_tokens=1)
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(0), kernel)  # type: ignore[arg-type]
    kill(sae)
    x = torch.randn(batch, d)
    with LargestTensor() as seen:
        sae(x).loss.backward()
    if kernel == "sparse":
        assert seen.largest <= max(batch * 7 * 2, n * d)
    else:
        assert seen.largest >= batch * n


def test_kernel_choice() -> None:
    base: dict[str, Any] = {"store": "s", "hook": "h", "latents": (8,), "tokens": 8,
                            "batch_size": 8, "out": "o"}
    with pytest.raises(ValueError, match="--kernel sparse applies to topk and batchtopk"):
        TrainConfig(arch="relu", l1=(0.1,), kernel="sparse", **base)

    def make(arch: str, kernel: str) -> SparseDictionary:
        cfg = DictionaryConfig(arch=arch, d_model=4, latents=8, k=2, l1=0.1)  # type: ignore[arg-type]
        return SparseDictionary(cfg, kernel=kernel)  # type: ignore[arg-type]
    assert make("topk", "auto").kernel == "sparse"
    assert make("batchtopk", "auto").kernel == "sparse"
    assert make("relu", "auto").kernel == "dense"
    assert make("topk", "dense").kernel == "dense"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_step_equals_dense_on_cuda(arch: str) -> None:
    dense, sparse = pair(arch, "cuda", torch.float32, dead_after_tokens=100)
    kill(dense, sparse)
    assert_same_step(dense, sparse, rows("cuda", torch.float32), rtol=1e-4, atol=1e-5)
