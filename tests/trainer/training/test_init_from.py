"""`actstore train --init-from PATH`: a run starts from a dictionary's weights (ours, or our
SAELens / sparsify export, which the peers' own loaders read: tests/trainer/dictionary/
test_saelens.py), moved into the run's normalised space; mismatched shapes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from actstore.shell.main import main
from tests.trainer.helpers import config, weights
from trainer.training.train import train


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_a_run_started_from_a_dictionary_starts_where_it_ended(store: str, tmp_path: Path,
                                                              arch: str) -> None:
    """At a learning rate too small to move anything, a run started from another run's
    dictionary (its own folder, its SAELens export, its sparsify export) ends with that
    dictionary's weights: the folds on export and back are exact, and b_dec is not
    re-initialised. A run from scratch at that rate ends elsewhere (the test means something)."""
    knob = {"k": (3,)} if arch == "topk" else {"k": (), "l0": (1e-3,)}
    first = tmp_path / "first"
    train(config(store, first, arch=arch, **knob, tokens=160, normalize="center_scale"))
    (name,) = weights(first)
    want = weights(first)[name]
    folder = first / "dictionaries" / name
    sources = [folder, folder / "saelens"] + ([folder / "sparsify"] if arch == "topk" else [])
    for i, path in enumerate(sources):
        out = tmp_path / f"again{i}"
        train(config(store, out, arch=arch, **knob, tokens=32, lr=1e-12, init_from=str(path),
                     normalize="center_scale"))
        got = weights(out)[name]
        for key in ("W_enc", "W_dec", "b_enc", "b_dec", "norm_mean"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5,
                                       msg=f"{path}: {key}")
        if arch == "jumprelu":
            torch.testing.assert_close(got["log_threshold"], want["log_threshold"],
                                       rtol=1e-4, atol=1e-5)
    fresh = tmp_path / "fresh"
    train(config(store, fresh, arch=arch, **knob, tokens=32, lr=1e-12, normalize="center_scale"))
    assert not torch.allclose(weights(fresh)[name]["W_dec"], want["W_dec"], atol=1e-3)


def test_a_mismatched_dictionary_is_refused_in_one_line(store: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    first = tmp_path / "first"
    train(config(store, first, k=(3,), tokens=32))
    (name,) = weights(first)
    path = str(first / "dictionaries" / name / "saelens")
    capsys.readouterr()  # the first run's own warnings
    args = ["train", "--store", store, "--hook", "encoder.layer.1", "--arch", "topk",
            "--k", "3", "--tokens", "32", "--batch-size", "16", "--init-rows", "64",
            "--eval-contexts", "0", "--warmup-steps", "1", "--no-progress", "--no-plots",
            "--init-from", path]
    assert main([*args, "--latents", "30", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "24 latents" in err
    assert "30 latents" in err
    assert err.count("\n") == 1
    assert main([*args, "--latents", "24", "--hook", "encoder.layer.3",
                 "--out", str(tmp_path / "b")]) == 2
    assert "12 wide" in capsys.readouterr().err
    assert main([*args, "--latents", "24", "--k", "2", "3", "--out", str(tmp_path / "c")]) == 2
    assert "not a sweep" in capsys.readouterr().err
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
