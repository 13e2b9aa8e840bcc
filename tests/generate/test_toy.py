"""`actstore toy` (actstore.generate.toy): synthetic stores with known features."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from actstore import ActivationStore
from actstore.generate.toy import (
    HOOK,
    ToyConfig,
    coefficients,
    ground_truth,
    make_toy_store,
    probabilities,
    sample,
)
from actstore.loader.ground_truth import load_ground_truth
from actstore.loader.toy_law import BLOCK
from actstore.shell.main import main
from actstore.store.quant import dequantise, quantise


def test_probabilities_decay_and_sum_to_the_mean_active() -> None:
    p = probabilities(ToyConfig(out="x", features=100, active=5, decay=0.97))
    assert float(p.sum()) == pytest.approx(5)
    assert bool((p[1:] <= p[:-1]).all())
    assert float(p[0] / p[1]) == pytest.approx(1 / 0.97)
    capped = probabilities(ToyConfig(out="x", features=10, active=9, decay=0.5))
    assert float(capped.sum()) == pytest.approx(9)
    assert float(capped.max()) == 1.0


def test_rows_have_the_asked_sparsity_and_correlation() -> None:
    cfg = ToyConfig(out="x", features=64, active=4, decay=0.98, correlation=1.0)
    on = coefficients(cfg, 0) > 0
    assert bool((on[:, 1::2] >= on[:, 0::2]).all())  # 2j active => 2j+1 active
    independent = coefficients(ToyConfig(out="x", features=64, active=4), 0) > 0
    assert float(independent.sum(1).float().mean()) == pytest.approx(4, rel=0.05)
    coef = coefficients(cfg, 0)
    assert float(coef.min()) == 0.0
    assert float(coef.max()) <= 1.0


def test_toy_store_is_complete_reused_and_holds_its_ground_truth(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["toy", "--out", str(tmp_path), "--d", "16", "--features", "24", "--active", "3",
            "--rows", str(BLOCK + 1000), "--seed", "5"]
    assert main(argv) == 0
    url = re.search(r"^done: (\S+): ", capsys.readouterr().out, re.M)
    assert url
    store = ActivationStore.open(url.group(1))
    assert store.complete
    assert store.num_rows == BLOCK + 1000
    cfg = ToyConfig(out=str(tmp_path), d=16, features=24, active=3, rows=BLOCK + 1000, seed=5)
    truth = load_ground_truth(store)
    assert truth is not None
    torch.testing.assert_close(truth, ground_truth(cfg))
    torch.testing.assert_close(truth.norm(dim=1), torch.ones(24))
    rows = torch.from_numpy(store.read_float32(HOOK, BLOCK - 10, BLOCK + 10))
    torch.testing.assert_close(rows, sample(cfg, truth, BLOCK - 10, BLOCK + 10))
    assert make_toy_store(cfg).url == store.url  # the same settings reuse it
    other = make_toy_store(ToyConfig(**{**cfg.__dict__, "seed": 6}))
    assert other.url != store.url


def test_an_8bit_toy_store_holds_its_rows_quantised(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["toy", "--out", str(tmp_path), "--d", "16", "--features", "24", "--active", "3",
            "--rows", "3000", "--dtype", "float8_e4m3"]
    assert main(argv) == 0
    url = re.search(r"^done: (\S+): ", capsys.readouterr().out, re.M)
    assert url
    store = ActivationStore.open(url.group(1))
    assert store.spec.dtype == "float8_e4m3"
    cfg = ToyConfig(out=str(tmp_path), d=16, features=24, active=3, rows=3000,
                    dtype="float8_e4m3")
    exact = sample(cfg, ground_truth(cfg), 0, 3000)
    q = quantise(exact, "float8_e4m3")
    assert torch.equal(store.read_torch(HOOK, 0, 3000), dequantise(q.codes, q.scales,
                                                                  "float8_e4m3"))


@pytest.mark.parametrize(("flags", "message"), [
    (["--active", "0"], "--active must be in"),
    (["--active", "30", "--features", "24"], "--active must be in"),
    (["--decay", "1.5"], "--decay must be in"),
    (["--rows", "0"], "must be >= 1"),
])
def test_bad_toy_settings_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
        message: str) -> None:
    assert main(["toy", "--out", str(tmp_path / "stores"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "stores").exists()


def test_a_hierarchy_fires_children_only_with_their_parents(tmp_path: Path) -> None:
    from actstore.loader.ground_truth import load_truth

    cfg = ToyConfig(out=str(tmp_path), d=16, features=30, hierarchy=2, active=4, rows=20000,
                    decay=0.95)
    store = make_toy_store(cfg)
    truth = load_truth(store)
    assert truth is not None
    assert truth.law == cfg.law
    parents = truth.parents
    assert parents is not None
    assert parents[:10].eq(-1).all()
    assert parents[10:].tolist() == [p for p in range(10) for _ in range(2)]
    codes = cfg.law.codes(0, 20000)
    on = codes > 0
    child_on, parent_on = on[:, 10:], on[:, parents[10:]]
    assert not (child_on & ~parent_on).any()  # never without the parent
    # each child with probability 1 / 2 when its parent fires: one child per occurrence
    per_occurrence = float(child_on.sum()) / float(on[:, :10].sum())
    assert per_occurrence == pytest.approx(1.0, abs=0.05)
    assert float(on.sum(1).double().mean()) == pytest.approx(4, rel=0.05)
    # the stored rows are those codes over the saved directions
    rows = store.read_torch(HOOK, 0, 20000).float()
    torch.testing.assert_close(rows, codes @ truth.features, rtol=1e-5, atol=1e-5)
    plain = load_truth(make_toy_store(ToyConfig(out=str(tmp_path), d=16, features=30,
                                                rows=1000)))
    assert plain is not None
    assert plain.parents is None  # no hierarchy: no parents


def test_a_hierarchy_needs_whole_families(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divisible by 3"):
        ToyConfig(out=str(tmp_path), features=31, hierarchy=2)
    with pytest.raises(ValueError, match="pick one"):
        ToyConfig(out=str(tmp_path), features=30, hierarchy=2, correlation=0.5)
