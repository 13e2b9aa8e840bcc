"""`actstore eval --dictionary PATH`: dictionaries saved by SAELens and sparsify themselves (their
own environment, random weights of every architecture) load as ours with the codes and
reconstructions the peers compute, and eval scores them as the peers' outputs say; widths and
hooks that do not match the store are refused in one line naming both."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actstore.loader.delivery import Normalizer
from actstore.shell.main import main
from tests.helpers import fill_store, straddling_store
from tests.trainer.evaluation.helpers import HOOK, _run
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import export_saelens, load_dictionary
from trainer.dictionary.foreign import load_any, same_hook
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.multihook.transcoders import evaluate_run
from trainer.evaluation.report import write_report

PYTHON = os.environ.get("ACTSTORE_SAELENS_PYTHON")
#: What each case of tests/peer_saves.py is, loaded by the peer itself.
CASES = {"standard": "StandardSAE", "topk": "TopKSAE", "topk_rescaled": "TopKSAE",
         "jumprelu": "JumpReLUSAE", "gemma_scope": "JumpReLUSAE", "llama_scope": "JumpReLUSAE",
         "batchtopk": "JumpReLUSAE", "batchtopk_training": "BatchTopKTrainingSAE",
         "sparsify/encoder.layer.1": "SparseCoder"}


@pytest.mark.saelens
@pytest.mark.skipif(not PYTHON, reason="ACTSTORE_SAELENS_PYTHON not set "
                    "(scripts/install_saelens.sh makes that environment)")
def test_peer_saved_dictionaries_load_with_the_peers_codes_and_score_alike(
        tmp_path: Path) -> None:
    assert PYTHON is not None
    store = straddling_store(str(tmp_path / "store"))
    want = fill_store(store)
    x = want.activations[HOOK].bfloat16().float()  # the store's rows, as eval reads them
    peers = tmp_path / "peers"
    peers.mkdir()
    save_file({"x": x.contiguous()}, peers / "inputs.safetensors")
    done = subprocess.run([PYTHON, str(Path(__file__).parents[2] / "peer_saves.py"),
                           str(peers)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == CASES
    for case in CASES:
        theirs = load_file(peers / case / "outputs.safetensors")
        got = load_any(peers / case)
        x_hat, sel = got.sae.infer(got.norm.apply(x))
        z = torch.zeros_like(theirs["z"])
        z[sel.rows, sel.cols] = sel.values
        assert int((theirs["z"] > 0).sum()) > len(x)  # a real comparison, not empty codes
        torch.testing.assert_close(z, theirs["z"], rtol=1e-5, atol=1e-5, msg=case)
        torch.testing.assert_close(x_hat, theirs["x_hat"], rtol=1e-5, atol=1e-5, msg=case)
    cfg = EvalConfig(out=str(tmp_path / "report"), store=store.url, hook=HOOK, ks=(1,),
                     dictionary=tuple(str(peers / c) for c in CASES), ica="none",
                     splice_contexts=0)
    ev = evaluate_run(cfg)
    # no run: the last shard (10% of 4, rounded up) is scored, less the straddling context
    held = [r for r in range(90, 104)
            if int(want.index.context[r]) > int(want.index.context[:90].max())]
    assert ev.meta["rows"] == len(held)
    assert ev.meta["run"] is None
    xs = x[held]
    variance = float((xs - xs.mean(0)).double().pow(2).sum())
    for case in CASES:
        theirs = load_file(peers / case / "outputs.safetensors")
        name = case.split("/")[-1]
        fvu = float((xs - theirs["x_hat"][held]).double().pow(2).sum()) / variance
        assert ev.dictionaries[name]["fvu"] == pytest.approx(fvu, rel=1e-5, abs=1e-7), case
        l0 = float((theirs["z"][held] > 0).sum(1).double().mean())
        assert ev.dictionaries[name]["l0"] == pytest.approx(l0), case
        assert ev.meta["imported"][name]["format"] == ("sparsify" if "/" in case else "saelens")
    write_report(ev, store, cfg)
    assert "No held-out slice" in (tmp_path / "report" / "report.md").read_text()


def test_hook_names_of_other_libraries() -> None:
    assert same_hook("encoder.layer.1", "encoder.layer.1")
    assert same_hook("layers.6", "gpt_neox.layers.6")  # sparsify: inside the base model
    assert same_hook("blocks.6.hook_resid_post", "transformer.h.6")
    assert same_hook("blocks.7.hook_resid_pre", "model.layers.6")
    assert not same_hook("blocks.6.hook_resid_post", "transformer.h.7")
    assert not same_hook("blocks.6.hook_mlp_out", "transformer.h.6")
    assert not same_hook("layers.6", "gpt_neox.layers.16")


def test_a_run_and_its_own_saelens_export_score_alike_and_mismatches_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Our SAELens export of a run's dictionary (normaliser folded in), passed with
    --dictionary, is scored on the run's held-out rows exactly as the run's own copy."""
    run, store, _ = _run(tmp_path, 0.5)
    sae = SparseDictionary(DictionaryConfig("topk", 12, 20, k=3),
                           torch.Generator().manual_seed(2))
    norm = Normalizer(torch.full((12,), 0.3), 0.5)
    source = {"store": store.url, "store_key": store.key, "hook": HOOK,
              "train_config": {"holdout": 0.5}, "model": "tiny-random"}
    from trainer.dictionary.export import save_dictionary
    save_dictionary(run / "dictionaries" / "topk", sae, norm, source)
    export_saelens(tmp_path / "exported" / "topk", *load_dictionary(run / "dictionaries" /
                                                                    "topk")[:2], source)
    out = tmp_path / "report"
    args = ["eval", "--run", str(run), "--out", str(out), "--ica", "none", "--ks", "1",
            "--splice-contexts", "0"]
    assert main([*args, "--dictionary", str(tmp_path / "exported" / "topk")]) == 0
    ev = json.loads((out / "eval.json").read_text())
    ours, theirs = ev["dictionaries"]["topk"], ev["dictionaries"]["exported-topk"]
    assert theirs["fvu"] == pytest.approx(ours["fvu"], rel=1e-5)
    assert theirs["l0"] == pytest.approx(ours["l0"])
    assert "never saw this store" in (out / "report.md").read_text()
    # a dictionary of another width, or one trained on another hook: one line naming both
    narrow = SparseDictionary(DictionaryConfig("relu", 5, 8))
    export_saelens(tmp_path / "narrow", narrow, Normalizer(None, 1.0), {"hook": HOOK})
    assert main([*args, "--dictionary", str(tmp_path / "narrow")]) == 2
    err = capsys.readouterr().err
    assert "width 5" in err
    assert f"{HOOK} of store" in err
    assert "width 12" in err
    assert err.count("\n") == 1
    export_saelens(tmp_path / "other", sae, norm, {"hook": "blocks.3.hook_resid_post"})
    assert main([*args, "--dictionary", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "blocks.3.hook_resid_post" in err
    assert HOOK in err
    assert main([*args, "--dictionary", str(tmp_path / "other"), "--any-hook"]) == 0
    # without a run, --store is needed; a folder that is no dictionary is named
    assert main(["eval", "--dictionary", str(tmp_path / "other"), "--out", str(out)]) == 2
    assert "--store" in capsys.readouterr().err
    assert main([*args, "--dictionary", str(tmp_path)]) == 2
    assert "no cfg.json" in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "said"), [
    ({"architecture": "gated"}, "'gated' has no counterpart"),
    ({"architecture": "skip_transcoder"}, "not transcoders"),
    ({"normalize_activations": "layer_norm"}, "normalises each input row"),
    ({"reshape_activations": "hook_z"}, "reshapes its input"),
])
def test_what_has_no_counterpart_is_refused_by_name(tmp_path: Path, edit: dict[str, str],
                                                    said: str) -> None:
    sae = SparseDictionary(DictionaryConfig("relu", 12, 8))
    folder = export_saelens(tmp_path / "sae", sae, Normalizer(None, 1.0), {"hook": HOOK})
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg | edit))
    with pytest.raises(ValueError, match=said):
        load_any(folder)


def test_a_file_lacking_a_tensor_is_named(tmp_path: Path) -> None:
    sae = SparseDictionary(DictionaryConfig("jumprelu", 12, 8))
    folder = export_saelens(tmp_path / "sae", sae, Normalizer(None, 1.0), {"hook": HOOK})
    tensors = load_file(folder / "sae_weights.safetensors")
    del tensors["threshold"]
    save_file(tensors, folder / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="lacks threshold"):
        load_any(folder)
