"""Model diffing (`actstore train --store A --store B --kind crosscoder`): two stores of the same
tokens through two tiny GPT-2s, paired row by row (each store shuffled in its own order),
refused when their tokens differ; a crosscoder trained on a model against a copy of itself
finds no latent of one model only (relative norm beyond [0.1, 0.9]), against a copy with
one block's MLP perturbed it finds latents of the copy only."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from actstore import ActivationStore
from actstore.loader.paired import SECOND, first_difference, pair
from trainer.evaluation.multihook.crosscoder import ONLY
from trainer.training.config import TrainConfig
from trainer.training.train import train

HOOK = "transformer.h.2"


def _store(model: str, root: Path, name: str, hook: str = HOOK) -> str:
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate

    return generate(GenerateConfig(model=model, hooks=(hook,), dataset="builtin:pydoc",
                                   out=str(root / name), context_length=32, max_tokens=4096,
                                   executor="local", progress=False)).url


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One corpus through a 3-block GPT-2 (A), a copy of it saved elsewhere (its own store
    key, so its own in-shard order), the copy with block 1's MLP re-drawn, and a 4-block
    GPT-2 (another model). Block 1's perturbation: 8 of its MLP's neurons fire rarely and
    write strongly (a random model's dense activations have no features that one model alone
    could hold)."""
    from tests.gen_fixtures import save_tiny

    root = tmp_path_factory.mktemp("diffing")
    base = save_tiny("gpt2", root / "models")
    copy = str(root / "models" / "copy")
    shutil.copytree(base, copy)
    perturbed = str(root / "models" / "perturbed")
    shutil.copytree(base, perturbed)
    model = transformers.GPT2LMHeadModel.from_pretrained(perturbed)
    mlp, neurons = model.transformer.h[1].mlp, torch.arange(8) * 16
    with torch.no_grad():  # 8 of its 128 neurons made rare and strong: features of B only
        mlp.c_fc.weight[:, neurons] *= 30
        mlp.c_fc.bias[neurons] = -5.0
        mlp.c_proj.weight[neurons] *= 30
    model.save_pretrained(perturbed)
    return {"a": _store(base, root, "a"), "copy": _store(copy, root, "copy"),
            "perturbed": _store(perturbed, root, "perturbed"),
            "other": _store(save_tiny("gpt2-4", root / "models"), root, "other")}


def diffing(stores: tuple[str, str], out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "store": stores, "hook": (HOOK,), "kind": "crosscoder", "arch": "relu",
        "latents": (64,), "l1": (1.0,), "tokens": 24576, "batch_size": 256, "out": str(out),
        "log_every": 16, "checkpoint_every": 48, "eval_contexts": 0, "progress": False,
        "init_rows": 512, "lr": 1e-2, "plots": False, "holdout": 0.1}
    return TrainConfig(**{**base, **kw})


def test_two_stores_are_read_row_by_row(stores: dict[str, str]) -> None:
    paired = pair(stores["a"], stores["other"])
    a, b = ActivationStore.open(stores["a"]), ActivationStore.open(stores["other"])
    ia, ib = a.read_index(0, a.num_rows), b.read_index(0, b.num_rows)
    assert not np.array_equal(ia.context, ib.context)  # each store in its own order
    # row r of HOOK@B is B's row of A's row r's (context, position), found by a plain search
    where = {(int(c), int(p)): i for i, (c, p) in enumerate(zip(ib.context, ib.position,
                                                                 strict=True))}
    want = [where[int(c), int(p)] for c, p in zip(ia.context, ia.position, strict=True)]
    got = paired.read_float32(HOOK + SECOND, 0, a.num_rows)
    np.testing.assert_array_equal(got, b.read_float32(HOOK, 0, b.num_rows)[want])
    np.testing.assert_array_equal(paired.read_float32(HOOK, 5, 40), a.read_float32(HOOK, 5, 40))


def test_stores_of_other_tokens_are_refused_naming_the_first_difference(
        stores: dict[str, str], tmp_path: Path) -> None:
    a = ActivationStore.open(stores["a"]).read_contexts()
    tokens = a.column("tokens").to_pylist()
    tokens[3][7] += 1
    b = a.set_column(a.schema.get_field_index("tokens"), "tokens", [tokens])
    assert first_difference(a, b) == (f"context {a['context_id'][3]}, position 7: token "
                                      f"{tokens[3][7] - 1} in A, {tokens[3][7]} in B")
    assert first_difference(a, a.slice(0, 5)) == f"context {a['context_id'][5]} is only in store A"
    assert first_difference(a, a) is None
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate

    model = ActivationStore.open(stores["a"]).spec.model
    shorter = generate(GenerateConfig(model=model, hooks=(HOOK,), dataset="builtin:pydoc",
                                      out=str(tmp_path), context_length=16, max_tokens=4096,
                                      executor="local", progress=False)).url
    # contexts of 16 tokens: the first is cut where the 32-token one goes on
    with pytest.raises(ValueError, match=r"same tokens: context 0, position 16: token [0-9]+ "
                                         r"in A, the end in B"):
        train(diffing((stores["a"], shorter), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def b_only(run: Path) -> tuple[int, int, Any]:
    """(B-only latents, A-only latents, the eval) of a finished run's crosscoder."""
    from trainer.evaluation.config import EvalConfig
    from trainer.evaluation.multihook.transcoders import evaluate_run

    ev = evaluate_run(EvalConfig(run=str(run), out=str(run / "report"), ica="none",
                                 splice_contexts=0))
    (name,) = ev.dictionaries
    s = ev.dictionaries[name]
    return int(s["only_site_1"]), int(s["only_site_0"]), ev


def test_a_perturbed_copy_has_latents_of_its_own_and_an_identical_copy_none(
        stores: dict[str, str], tmp_path: Path) -> None:
    train(diffing((stores["a"], stores["copy"]), tmp_path / "same"))
    train(diffing((stores["a"], stores["perturbed"]), tmp_path / "perturbed"))
    same_b, same_a, ev = b_only(tmp_path / "same")
    assert ev.meta["sites"][1]["store"] == stores["copy"]
    shares = torch.tensor(ev.meta["crosscoder"]["relu-n64-l1-1"]["relative_norms"])
    assert (same_b, same_a) == (0, 0), shares  # no relative norm beyond [1 - ONLY, ONLY]
    pert_b, _, ev = b_only(tmp_path / "perturbed")
    assert pert_b > 0
    assert ONLY == 0.9


def test_two_different_models_end_to_end(stores: dict[str, str], tmp_path: Path) -> None:
    from trainer.evaluation.report import write_report

    result = train(diffing((stores["a"], stores["other"]), tmp_path / "run", tokens=4096))
    assert len(result.dictionaries) == 1
    _, _, ev = b_only(tmp_path / "run")
    (name,) = ev.dictionaries
    assert ev.dictionaries[name]["fvu_site_0"] < 1
    assert ev.dictionaries[name]["fvu_site_1"] < 1
    assert sum(ev.meta["crosscoder"][name]["histograms"][1]) == 64
    out = write_report(ev, ActivationStore.open(stores["a"]), _eval_cfg(tmp_path))
    assert "## Crosscoder sites" in (out / "report.md").read_text()


def test_a_hook_of_store_b_named_apart(stores: dict[str, str], tmp_path: Path) -> None:
    """`--hook H --hook X@B`: store B's own hook X (a model whose modules are named apart),
    read beside A's H; `X@B` with one store is refused in one line."""
    from tests.gen_fixtures import save_tiny

    other = _store(save_tiny("gpt2-4", tmp_path / "models"), tmp_path, "b", "transformer.h.3")
    cfg = diffing((stores["a"], other), tmp_path / "run", tokens=4096,
                  hook=(HOOK, "transformer.h.3" + SECOND))
    assert cfg.sites == (HOOK, "transformer.h.3@B")
    train(cfg)
    _, _, ev = b_only(tmp_path / "run")
    assert ev.meta["sites"] == [{"store": stores["a"], "hook": HOOK},
                                {"store": other, "hook": "transformer.h.3"}]
    (score,) = ev.dictionaries.values()
    assert score["fvu_site_1"] < 1
    # row by row: B's site is B's hook at A's rows' (context, position)
    paired = pair(stores["a"], other)
    ia, ib = (ActivationStore.open(u).read_index(0, paired.num_rows) for u in (stores["a"], other))
    where = {(int(c), int(p)): i for i, (c, p) in enumerate(zip(ib.context, ib.position,
                                                                 strict=True))}
    want = [where[int(c), int(p)] for c, p in zip(ia.context, ia.position, strict=True)]
    np.testing.assert_array_equal(paired.read_float32("transformer.h.3@B", 0, 64),
                                  ActivationStore.open(other).read_float32(
                                      "transformer.h.3", 0, paired.num_rows)[want[:64]])
    with pytest.raises(ValueError, match=r"--hook transformer.h.3@B names a hook of a second "
                                         r"store"):
        diffing((stores["a"],), tmp_path / "one", hook=(HOOK, "transformer.h.3@B"))


def _eval_cfg(tmp_path: Path) -> Any:
    from trainer.evaluation.config import EvalConfig

    return EvalConfig(run=str(tmp_path / "run"), out=str(tmp_path / "report"), ica="none")


def test_a_resumed_diffing_run_replays_the_uninterrupted_run(
        stores: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One permutation for both stores, its position in the checkpoint: the batches after a
    resume are the uninterrupted run's."""
    from tests.trainer.helpers import assert_same_weights, curves, die_at_step

    pair_ = (stores["a"], stores["perturbed"])
    settings: dict[str, Any] = {"tokens": 4096, "batch_size": 128, "checkpoint_every": 16,
                                "log_every": 8, "shuffle_buffer": 1024}
    train(diffing(pair_, tmp_path / "whole", **settings))
    with monkeypatch.context() as m:
        die_at_step(m, 21)
        with pytest.raises(KeyboardInterrupt):
            train(diffing(pair_, tmp_path / "cut", **settings))
    train(diffing(pair_, tmp_path / "cut", resume=True, **settings))
    assert curves(tmp_path / "cut") == curves(tmp_path / "whole")
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")
