"""A run at default settings (trainer.training.config's defaults, resolved by
trainer.training.resolve): every architecture ends sparse, and the first line of train's output
names the defaults it took."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from actstore.generate.toy import HOOK, ToyConfig, make_toy_store
from actstore.shell.main import main
from actstore.store.activation_store import ActivationStore
from tests.helpers import HOOKS
from tests.trainer.helpers import assert_same_weights, config, die_at_step
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.dictionary.export import load_dictionary
from trainer.training.checkpoint import BEFORE_JUMP_FLAGS
from trainer.training.config import KNOB, TrainConfig, default_lr
from trainer.training.defaults import DEFAULT_SPARSITY, JUMP, LR_SCALE
from trainer.training.train import train

#: A toy store of 64 dimensions (5 of 256 features active per row): one pass at the default
#: batch of 4096 rows is 32 steps, half the quickstart's run.
ROWS, LATENTS = 32 * 4096, 256
#: What "sparse" means here: at most twice the TopK default k (32) latents active per token,
#: a quarter of the dictionary and the width of the activations. jumprelu's old defaults
#: (threshold 0.001) leave about half of the latents active, 128.
SPARSE = 2 * int(DEFAULT_SPARSITY["topk"][0])
#: DictionaryConfig's jump_init_threshold and jump_bandwidth, the defaults.
JUMP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DictionaryConfig) if f.name in JUMP}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_toy_store(ToyConfig(out=str(tmp_path_factory.mktemp("toy")), d=64,
                                    features=256, active=5, rows=ROWS)).url


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "matryoshka"])
def test_a_run_at_the_defaults_is_sparse_for_every_architecture(
        toy: str, tmp_path: Path, arch: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing but the store, the hook, the architecture and the size: one pass over the
    store in batches of 4096, said in the first line (beside the progress bar), and the
    dictionary it writes has at most SPARSE latents active per token on the store's rows."""
    result = train(TrainConfig(store=toy, hook=HOOK, arch=arch, latents=(LATENTS,),  # type: ignore[arg-type]
                               out=str(tmp_path), plots=False))
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"train: 32 steps of 4096 rows = {ROWS:,} tokens; defaults: "
                            f"--batch-size 4096, --tokens {ROWS:,} (one pass over the {ROWS:,} "
                            f"training rows), --{KNOB[arch]} "), first
    assert result.steps == ROWS // 4096
    sae, norm, _ = load_dictionary(result.dictionaries[0])
    x = ActivationStore.open(toy).read_torch(HOOK, 0, 8192).float()
    with torch.no_grad():
        l0 = float((sae.encode(norm.apply(x)) > 0).sum(-1).float().mean())
    assert 1 <= l0 <= SPARSE, f"{arch}: L0 {l0:.1f}"


def test_the_first_line_names_each_default_taken(store: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--tokens' default passes once over the rows not held out (the store's 104 rows in
    shards of 32: 96 train), and a checkpoint interval is derived from --log-every."""
    assert main(["train", "--store", store, "--hook", HOOKS[0], "--arch", "jumprelu",
                 "--latents", "8", "--batch-size", "16", "--log-every", "4", "--holdout",
                 "0.25", "--eval-contexts", "0", "--out", str(tmp_path), "--no-plots"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (f"train: 6 steps of 16 rows = 96 tokens; defaults: --tokens 96 (one pass "
                     f"over the 96 training rows), --l0 {DEFAULT_SPARSITY['jumprelu'][0]:g}, "
                     f"--jump-init-threshold {JUMP_DEFAULTS['jump_init_threshold']:g}, "
                     f"--jump-bandwidth {JUMP_DEFAULTS['jump_bandwidth']:g}, "
                     "--checkpoint-every 500")


def _as_before_the_new_defaults(m: pytest.MonkeyPatch) -> None:
    """Checkpoints written as an actstore without --jump-init-threshold / --jump-bandwidth
    wrote them: no such settings, every dictionary at the old defaults (0.001), and every
    architecture at TopK's learning rate."""
    to_dict, members = TrainConfig.to_dict, TrainConfig.dictionaries
    m.setattr(TrainConfig, "to_dict", lambda self: {
        k: v for k, v in to_dict(self).items() if k not in JUMP})
    m.setattr(TrainConfig, "dictionaries", lambda self, *a, **kw: [
        dataclasses.replace(d, **BEFORE_JUMP_FLAGS) for d in members(self, *a, **kw)])
    for arch in LR_SCALE:
        m.setitem(LR_SCALE, arch, 1.0)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_a_checkpoint_from_before_the_new_defaults_resumes_with_its_old_meaning(
        store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """A jumprelu checkpoint without the jump settings trained at threshold and bandwidth
    0.001: resumed without them it is refused, naming them (the new defaults would be another
    run); with them it ends as the uninterrupted run, at the learning rate it started with
    (the schedulers' state holds it). Other architectures never used the jump settings, so
    theirs resume as they are."""
    knob = {"k": (), "l0": (0.01,)} if arch == "jumprelu" else {}
    old = dict(BEFORE_JUMP_FLAGS) if arch == "jumprelu" else {}
    train(config(store, tmp_path / "whole", arch=arch, lr=default_lr(24), **knob, **old))
    with monkeypatch.context() as m:
        _as_before_the_new_defaults(m)
        die_at_step(m, 28)
        with pytest.raises(KeyboardInterrupt):
            train(config(store, tmp_path / "cut", arch=arch, lr=None, **knob))
    if arch == "jumprelu":
        with pytest.raises(ValueError, match=r"dictionaries differ \(#0 jump_bandwidth: saved "
                                             r"0\.001, now .*; #0 jump_init_threshold: saved "
                                             r"0\.001, now "):
            train(config(store, tmp_path / "cut", arch=arch, lr=None, **knob, resume=True))
    train(config(store, tmp_path / "cut", arch=arch, lr=None, **knob, **old, resume=True))
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")
