"""Loss recovered in `actstore eval` (trainer.evaluation.loss_recovered): dictionaries and
baselines spliced into a real tiny GPT-2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.evaluation.config import EvalConfig
from trainer.evaluation.report import write_report
from trainer.evaluation.run import evaluate


def test_loss_recovered_spliced_for_dictionaries_and_baselines(tmp_path: Path) -> None:
    """A real (tiny) GPT-2 store: each dictionary and each baseline at its k spliced into the
    model. At k = d every baseline is a full basis, so it must give the clean model back; a
    dictionary's numbers equal the training loop's splicer on the same contexts."""
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate
    from actstore.loader import holdout
    from tests.gen_fixtures import save_tiny
    from trainer.evaluation.imported.members import imported
    from trainer.evaluation.run import load_run, open_slice
    from trainer.evaluation.splicer import Splicer
    from trainer.training.config import TrainConfig
    from trainer.training.train import train

    model = save_tiny("gpt2", tmp_path / "model")  # d_model 32
    hook = "transformer.h.1"
    url = generate(GenerateConfig(model=model, hooks=(hook,), dataset="builtin:pydoc",
                                  out=str(tmp_path / "stores"), context_length=32,
                                  max_tokens=8192, executor="local", progress=False)).url
    train(TrainConfig(store=url, hook=hook, arch="topk", latents=(64,), k=(4, 32),
                      tokens=4096, batch_size=256, out=str(tmp_path / "run"), holdout=0.25,
                      eval_contexts=0, progress=False, plots=False))
    # the k=4 dictionary's SAELens export, read back as a dictionary from elsewhere
    exported = str(tmp_path / "run" / "dictionaries" / "topk-n64-k4" / "saelens")
    cfg = EvalConfig(run=str(tmp_path / "run"), out=str(tmp_path / "report"), ica_rows=512,
                     splice_contexts=8, dictionary=(exported,))
    ev = evaluate(cfg, load_run(cfg.run_dir) + imported(cfg, load_run(cfg.run_dir)))
    rows = {(r["method"], r["k"]): r for r in ev.spliced}
    bases = ("pca", "neurons", "random", "ica")
    assert set(rows) == {("topk-n64-k4", 4), ("topk-n64-k32", 32), ("saelens", 4)} | {
        (b, k) for b in bases for k in (4, 32)}
    # spliced alike, on raw activations; the export folds the normaliser into float32 weights,
    # so the two differ by rounding (2.5e-5 relative seen on a KL of 0.07), not by a code
    for key in ("ce_spliced", "kl", "loss_recovered"):
        assert rows["saelens", 4][key] == pytest.approx(rows["topk-n64-k4", 4][key], rel=1e-4)
    assert ev.meta["spliced"] == "8 held-out contexts"
    for b in bases:
        assert rows[b, 32]["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
        assert rows[b, 32]["kl"] == pytest.approx(0.0, abs=1e-5)
        assert rows[b, 4]["kl"] > 1e-4  # four codes of 32 lose something the model sees
    members = load_run(cfg.run_dir)
    store, part, _ = open_slice(cfg, members[0])
    for m in members:
        direct = Splicer(store, hook, m.norm, 8, torch.device("cpu"),
                         first_context=holdout.first_held_out_context(store, part))
        want = direct.evaluate([m.sae])[0]
        got = rows[m.name, m.sae.cfg.k]
        for key in ("ce_clean", "ce_zero", "ce_spliced", "kl", "loss_recovered"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
    report = write_report(ev, store, cfg)
    assert "## Loss recovered, the reconstruction spliced into the model (8 held-out" in \
        (report / "report.md").read_text()
    assert json.loads((report / "eval.json").read_text())["spliced"] == ev.spliced
    # the browser: every latent, with the tokens its direction promotes (a causal LM's store)
    assert "unembedding" in ev.meta["logit_lens"]
    assert {n: fx.up_ids.shape for n, fx in ev.token_effects.items()} == dict.fromkeys(
        ("topk-n64-k4", "topk-n64-k32", "saelens"), (64, cfg.logit_tokens))
    index = (report / "latents" / "index.js").read_text()
    methods = json.loads(index[len("actstore.index("):-3])["methods"]
    assert all(m["effects"] and m["latents"] == 64 for m in methods.values())
