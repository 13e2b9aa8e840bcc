"""`actstore eval`: scores on the held-out slice, the right top rows per latent, the report's
files, its page rendered in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from actstore.loader.loader import Normalizer
from actstore.shell.main import main
from actstore.store.activation_store import ActivationStore
from tests.helpers import HOOKS, Expected, fill_store, straddling_store
from trainer.dictionary.dictionaries import DictionaryConfig, SparseDictionary
from trainer.dictionary.export import save_dictionary
from trainer.dictionary.kernels import from_sorted
from trainer.evaluation import examples
from trainer.evaluation.config import EvalConfig
from trainer.evaluation.report import write_report
from trainer.evaluation.run import evaluate

HOOK = HOOKS[0]  # d_model 12


def _neuron_dictionary(d: int) -> SparseDictionary:
    """codes = relu(x), x̂ = codes: latent j is coordinate j, so its top rows are known."""
    sae = SparseDictionary(DictionaryConfig("relu", d, d))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def _run(tmp_path: Path, holdout_fraction: float, url: str | None = None
         ) -> tuple[Path, ActivationStore, Expected]:
    store = straddling_store(url or str(tmp_path / "store"))
    want = fill_store(store)
    run = tmp_path / "run"
    source = {"store": store.url, "store_key": store.key, "hook": HOOK,
              "train_config": {"holdout": holdout_fraction}}
    save_dictionary(run / "dictionaries" / "neurons-relu", _neuron_dictionary(12),
                    Normalizer(None, 1.0), source)
    return run, store, want


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


def test_collector_merges_exactly_like_one_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    latents, top, total = 7, 4, 0
    collector = examples.TopCollector(latents, top, buffer=10)  # many merges
    seen: list[tuple[int, float, int]] = []
    for batch in range(6):
        rows = torch.randint(0, 9, (30,), generator=gen).sort().values
        cols = torch.randint(0, latents, (30,), generator=gen)
        values = torch.rand(30, generator=gen) + 0.01
        store_rows = torch.arange(9) + 100 * batch
        collector.add(from_sorted(rows, cols, values, 9), store_rows)
        seen += [(int(c), float(v), int(store_rows[r]))
                 for r, c, v in zip(rows, cols, values, strict=True)]
        total += 9
    got = collector.result()
    assert got.tokens == total
    for j in range(latents):
        mine = sorted((v, r) for c, v, r in seen if c == j)[::-1][:top]
        assert got.rows[j][:len(mine)].tolist() == [r for _, r in mine]
        assert got.values[j][:len(mine)].tolist() == pytest.approx([v for v, _ in mine])
        assert int(got.fired[j]) == sum(1 for c, _, _ in seen if c == j)
        assert int(got.histogram[j].sum()) == int(got.fired[j])


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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed")
def test_index_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    run, _, _ = _run(tmp_path, 0.5)
    cfg = EvalConfig(run=str(run), out=str(tmp_path / "report"), ks=(1, 2), top=3, show=12,
                     ica="none")
    ev = evaluate(cfg)
    write_report(ev, ActivationStore.open(ev.meta["store"]), cfg)
    pages = json.loads((tmp_path / "report" / "latents.json").read_text())
    name = "neurons-relu"
    latent, page = next(iter(pages["dictionaries"][name]["pages"].items()))

    def dom(fragment: str) -> str:
        url = (tmp_path / "report" / "index.html").as_uri() + fragment
        done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                               "--dump-dom", url], capture_output=True, text=True, timeout=120,
                              check=True)
        return done.stdout

    shown = dom(f"#dict={name}&latent={latent}")
    assert f"{name} latent {latent}" in shown  # the script ran and rendered the page
    for e in page["examples"]:
        assert f'data-row="{e["row"]}"' in shown
        assert f'<span class="tok">{e["token"]}</span>' in shown
    assert "neurons-relu</td>" in shown  # the metrics table
    assert shown.count("<tr>") >= 3
    missing = dom(f"#dict={name}&latent=99999")
    assert "latent 99999 of neurons-relu has no page" in missing


def test_torchrun_ranks_split_the_work_and_report_what_one_process_does(
        tmp_path: Path) -> None:
    """`torchrun … actstore eval`: the ranks split PCA's covariance (training rows), the
    dictionary's scores and top activations and the baselines' frontier (held-out rows); ICA is
    fitted on rank 0. The report equals one process's."""
    import subprocess
    import sys

    from tests.test_ddp import env

    run, _, _ = _run(tmp_path, 0.5)
    args = ["eval", "--run-dir", str(run), "--ica-rows", "256", "--ks", "1", "3", "12",
            "--top", "5"]
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
    for key, value in one["dictionaries"]["neurons-relu"].items():
        assert two["dictionaries"]["neurons-relu"][key] == pytest.approx(value, rel=1e-9)
    tops = [json.loads((tmp_path / o / "latents.json").read_text()) for o in ("one", "two")]
    assert tops[0] == tops[1]  # the same top rows, values and texts for every latent shown


def test_training_sample_ranks_cover_the_sample_once(tmp_path: Path) -> None:
    from actstore.loader import holdout

    store = straddling_store(str(tmp_path / "s"))
    fill_store(store)
    split = holdout.split(store, 0.5)
    whole = torch.cat(list(holdout.training_sample(store, HOOK, split, 50, block=7)))
    parts = [torch.cat(list(holdout.training_sample(store, HOOK, split, 50, block=7, rank=r,
                                                    world=3))) for r in range(3)]
    assert 30 < len(whole) <= 50  # up to 50: blocks are cut at shard ends
    assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, whole.tolist()))


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


def test_loss_recovered_spliced_for_dictionaries_and_baselines(tmp_path: Path) -> None:
    """A real (tiny) GPT-2 store: each dictionary and each baseline at its k spliced into the
    model. At k = d every baseline is a full basis, so it must give the clean model back; a
    dictionary's numbers equal the training loop's splicer on the same contexts."""
    from actstore.generate.config import GenerateConfig
    from actstore.generate.pipeline import generate
    from actstore.loader import holdout
    from tests.gen_fixtures import save_tiny
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
    cfg = EvalConfig(run=str(tmp_path / "run"), out=str(tmp_path / "report"), ica_rows=512,
                     splice_contexts=8)
    ev = evaluate(cfg)
    rows = {(r["method"], r["k"]): r for r in ev.spliced}
    bases = ("pca", "neurons", "random", "ica")
    assert set(rows) == {("topk-n64-k4", 4), ("topk-n64-k32", 32)} | {
        (b, k) for b in bases for k in (4, 32)}
    assert ev.meta["spliced"] == "8 held-out contexts"
    for b in bases:
        assert rows[b, 32]["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
        assert rows[b, 32]["kl"] == pytest.approx(0.0, abs=1e-5)
        assert rows[b, 4]["kl"] > 1e-4  # four codes of 32 lose something the model sees
    members = load_run(cfg.run)
    store, split, _ = open_slice(cfg, members[0])
    for m in members:
        direct = Splicer(store, hook, m.norm, 8, torch.device("cpu"),
                         first_context=holdout.first_held_out_context(store, split))
        want = direct.evaluate([m.sae])[0]
        got = rows[m.name, m.sae.cfg.k]
        for key in ("ce_clean", "ce_zero", "ce_spliced", "kl", "loss_recovered"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
    report = write_report(ev, store, cfg)
    assert "## Loss recovered, the reconstruction spliced into the model (8 held-out" in \
        (report / "report.md").read_text()
    assert json.loads((report / "eval.json").read_text())["spliced"] == ev.spliced
