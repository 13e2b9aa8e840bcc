"""`actstore eval` (trainer.evaluation.run): scores on the held-out slice, the right top
rows per latent, refusals, torchrun ranks, every backend, every architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actstore.loader.delivery import Normalizer
from actstore.shell.main import main
from tests.helpers import fill_store, straddling_store
from tests.trainer.evaluation.helpers import HOOK, _run
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import save_dictionary
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.report import write_report
from trainer.evaluation.run import evaluate


def test_top_rows_and_scores_on_the_held_out_slice(tmp_path: Path) -> None:
    run, store, want = _run(tmp_path, 0.5)
    cfg = EvalConfig(run=str(run), out=str(tmp_path / "report"), ks=(1, 12), top=3, show=12,
                     ica="none", window=2)
    ev = evaluate(cfg)
    held = [r for r in range(60, 104)
            if int(want.index.context[r]) > int(want.index.context[:60].max())]
    x = want.activations[HOOK].bfloat16().float()[held]
    assert ev.meta["held_out"]
    assert ev.meta["rows"] == len(held)
    # the dictionary keeps the positive part of x: its FVU and L0 are known
    fvu = float((x - x.relu()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert ev.dictionaries["neurons-relu"]["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert ev.dictionaries["neurons-relu"]["l0"] == pytest.approx(float((x > 0).sum(1)
                                                                  .double().mean()))
    rows = {(r["method"], r["k"]): r["fvu"] for r in ev.frontier}
    l0 = round(ev.dictionaries["neurons-relu"]["l0"])  # relu has no k: its L0 stands for it
    assert set(rows) >= {("pca", 1), ("pca", 12), ("neurons", 12), ("random", 12),
                         ("pca", l0), ("neurons-relu", l0)}
    assert rows[("neurons", 12)] == pytest.approx(0.0, abs=1e-6)  # complete bases are exact
    write_report(ev, store, cfg)
    latents = json.loads((tmp_path / "report" / "latents.json").read_text())
    pages = latents["dictionaries"]["neurons-relu"]["pages"]
    for j, page in pages.items():
        col = x[:, int(j)]
        best = torch.argsort(col, descending=True, stable=True)[:3]  # ties: earlier row
        best = [held[i] for i in best.tolist() if col[i] > 0]
        assert [e["row"] for e in page["examples"]] == best  # the right rows, in order
        for e in page["examples"]:
            r = e["row"]
            assert e["token"] == f"#{int(want.index.token[r])}"
            assert e["context"] == int(want.index.context[r])
            assert e["position"] == int(want.index.position[r])
            assert e["value"] == pytest.approx(float(x[held.index(r), int(j)]))
    summary = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert all(set(r) == {"method", "k", "l0", "fvu"} for r in summary["frontier"])
    assert (tmp_path / "report" / "report.md").read_text().startswith("# Evaluation of")
    assert (tmp_path / "report" / "frontier.png").stat().st_size > 1000


def test_eval_reads_an_8bit_store_as_its_dequantised_rows(tmp_path: Path) -> None:
    run, store, _ = _run(tmp_path, 0.5, dtype="float8_e4m3")
    ev = evaluate(EvalConfig(run=str(run), out=str(tmp_path / "report"), ks=(1,), top=3,
                             show=2, ica="none", window=2))
    idx = store.read_index(0, store.num_rows)
    held = [r for r in range(60, 104) if int(idx.context[r]) > int(idx.context[:60].max())]
    x = store.read_torch(HOOK, 0, store.num_rows)[held]  # float32 values of the 8-bit rows
    fvu = float((x - x.relu()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert ev.dictionaries["neurons-relu"]["fvu"] == pytest.approx(fvu, rel=1e-5)


def test_a_run_that_held_nothing_out_is_refused_unless_asked(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    run, _, _ = _run(tmp_path, 0.0)
    out = tmp_path / "report"
    args = ["eval", "--run", str(run), "--out", str(out), "--ica", "none", "--ks", "1", "2"]
    assert main(args) == 2
    assert "--holdout" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--on-training-rows"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["meta"]["held_out"] is False
    assert "TRAINED ON" in (out / "index.html").read_text()
    assert main(["eval", "--run", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no trained dictionary" in capsys.readouterr().err


def test_eval_refuses_another_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _, _ = _run(tmp_path, 0.5)
    other = straddling_store(str(tmp_path / "other"))
    fill_store(other, seed=1)
    cfg = json.loads((run / "dictionaries" / "neurons-relu" / "cfg.json").read_text())
    cfg["source"]["store_key"] = "0" * 16
    (run / "dictionaries" / "neurons-relu" / "cfg.json").write_text(json.dumps(cfg))
    assert main(["eval", "--run", str(run), "--out", str(tmp_path / "r")]) == 2
    assert "is not the store the run trained on" in capsys.readouterr().err


def test_torchrun_ranks_split_the_work_and_report_what_one_process_does(
        tmp_path: Path) -> None:
    """`torchrun … actstore eval`: the ranks split PCA's covariance (training rows), the
    dictionary's scores and top activations and the baselines' frontier (held-out rows); ICA is
    fitted on rank 0. The report equals one process's, a --dictionary from elsewhere (here
    the run's own, read as a foreign folder) included."""
    import subprocess
    import sys

    from tests.trainer.helpers import env

    run, _, _ = _run(tmp_path, 0.5)
    args = ["eval", "--run-dir", str(run), "--ica-rows", "256", "--ks", "1", "3", "12",
            "--top", "5", "--dictionary", str(run / "dictionaries" / "neurons-relu")]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "actstore",
                    *args, "--out", str(tmp_path / "two")], check=True, env=env(),
                   timeout=300)
    one, two = (json.loads((tmp_path / o / "eval.json").read_text()) for o in ("one", "two"))
    assert {r["method"] for r in one["frontier"]} >= {"pca", "ica", "neurons", "random"}
    assert [(r["method"], r["k"]) for r in one["frontier"]] == \
        [(r["method"], r["k"]) for r in two["frontier"]]
    for a, b in zip(one["frontier"], two["frontier"], strict=True):
        assert a["fvu"] == pytest.approx(b["fvu"], rel=1e-9, abs=1e-12)
    assert len(one["dictionaries"]) == 2  # the run's and the --dictionary
    assert one["dictionaries"].keys() == two["dictionaries"].keys()
    for name, scores in one["dictionaries"].items():
        for key, value in scores.items():
            assert two["dictionaries"][name][key] == pytest.approx(value, rel=1e-9), (name, key)
    tops = [json.loads((tmp_path / o / "latents.json").read_text()) for o in ("one", "two")]
    assert tops[0] == tops[1]  # the same top rows, values and texts for every latent shown
    # the browser's shards: every latent's top and sampled (quantile) firings, alike
    shards = [{f.name: f.read_text() for f in (tmp_path / o / "latents" / "d0").glob("*.js")}
              for o in ("one", "two")]
    assert shards[0]
    assert shards[0] == shards[1]
    assert '"q":[[' in next(iter(shards[0].values()))


def test_eval_reads_a_store_on_every_backend(tmp_path: Path, store_url: str) -> None:
    """The same report from a store in memory, on disk and on S3 (moto on 127.0.0.1)."""
    run, store, want = _run(tmp_path, 0.5, store_url)
    cfg = EvalConfig(run=str(run), out=str(tmp_path / "report"), ks=(1, 12), top=2, show=4,
                     ica="none")
    ev = evaluate(cfg)
    assert ev.meta["store"] == store.url
    held = [r for r in range(60, 104)
            if int(want.index.context[r]) > int(want.index.context[:60].max())]
    x = want.activations[HOOK].bfloat16().float()[held]
    fvu = float((x - x.relu()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert ev.dictionaries["neurons-relu"]["fvu"] == pytest.approx(fvu, rel=1e-5)
    write_report(ev, store, cfg)
    pages = json.loads((tmp_path / "report" / "latents.json").read_text())
    assert pages["dictionaries"]["neurons-relu"]["pages"]


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_dictionary_scores_equal_a_plain_forward_for_every_architecture(
        tmp_path: Path, arch: str) -> None:
    """eval's FVU and L0 against encode/decode of the saved dictionary on the held-out rows,
    normalised and un-normalised by hand (the sparse inference path for topk/batchtopk)."""
    store = straddling_store(str(tmp_path / "store"))
    want = fill_store(store)
    cfg = DictionaryConfig(arch, 12, 20, k=3 if arch in ("topk", "batchtopk") else None)
    sae = SparseDictionary(cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)  # relu / jumprelu: some codes positive, some not
        if arch == "batchtopk":
            sae.threshold.fill_(0.2)
    norm = Normalizer(torch.full((12,), 0.3), 0.5)
    source = {"store": store.url, "store_key": store.key, "hook": HOOK,
              "train_config": {"holdout": 0.5}}
    save_dictionary(tmp_path / "run" / "dictionaries" / arch, sae, norm, source)
    ev = evaluate(EvalConfig(run=str(tmp_path / "run"), out=str(tmp_path / "r"), ks=(1,),
                             ica="none"))
    held = [r for r in range(60, 104)
            if int(want.index.context[r]) > int(want.index.context[:60].max())]
    x = want.activations[HOOK].bfloat16().float()[held]
    with torch.no_grad():
        z = sae.encode(norm.apply(x))
        x_hat = norm.invert(sae.decode(z))
    fvu = float((x - x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum())
    assert ev.dictionaries[arch]["fvu"] == pytest.approx(fvu, rel=1e-4)
    l0 = float((z > 0).sum(1).double().mean())
    assert 0 < l0 < 20  # codes neither all off nor all on: the comparison means something
    assert ev.dictionaries[arch]["l0"] == pytest.approx(l0)
