"""`actstore bench`: every stage runs on a tiny model without Ray, and the report holds each
number beside its ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actstore import ActivationStore, Layout
from actstore.bench import storage
from actstore.shell.main import main
from tests.gen_fixtures import save_tiny
from tests.helpers import HOOKS, fill_store, make_spec


def test_quick_bench_measures_every_stage(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = save_tiny("gpt2", tmp_path)
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out), "--model", model, "--hook",
                 "transformer.h.1", "--context-length", "16", "--batch-size", "8",
                 "--latents", "64", "--seconds", "0.05", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    result = json.loads((out / "bench.json").read_text())
    stages = result["stages"]
    assert set(stages) == {"generation", "store", "loader", "trainer"}
    g = stages["generation"]
    assert g["tokens"] > 0
    assert g["bare_tokens_per_s"] > 0
    assert g["pipeline_vs_bare"] == pytest.approx(
        g["pipeline_tokens_per_s"] / g["bare_tokens_per_s"])
    s = stages["store"]
    assert s["rows"] == result["plan"]["store_rows"]
    assert s["shards"] > 1
    assert s["compression_ratio"] > 1
    assert s["write_vs_disk"] > 0
    assert s["read_vs_disk"] > 0
    loader = stages["loader"]
    assert loader["rows"] == s["rows"]  # one whole epoch
    assert loader["shuffle_same_context_ratio"] > 0
    trainer = {(r["latents"], r["kernel"]): r for r in stages["trainer"]}
    assert set(trainer) == {(64, "dense"), (64, "sparse")}
    assert all(r["memory_tokens_per_s"] > 0 and r["loader_tokens_per_s"] > 0
               for r in trainer.values())
    assert "sparse_vs_dense" in trainer[(64, "sparse")]
    machine = result["machine"]
    assert machine["cores"] >= 1
    assert machine["versions"]["torch"]
    md = (out / "bench.md").read_text()
    for section in ("## Generation", "## Store", "## Loader", "## Trainer"):
        assert section in md
    assert md in printed.out  # the same table on stdout
    assert "[bench" in printed.err  # progress
    assert not list(out.glob("scratch-*"))  # scratch stores removed


def test_the_store_and_loader_stages_measure_an_8bit_store(tmp_path: Path) -> None:
    source = ActivationStore.create(
        str(tmp_path / "source"), make_spec("float8_e4m3", hooks=(HOOKS[0],)),
        Layout(num_rows=104, d_model={HOOKS[0]: 12}, shard_rows=32, chunk_rows=8))
    fill_store(source)
    st, tiled = storage.measure_store(source, tmp_path, 1000)
    assert tiled.spec.dtype == "float8_e4m3"
    assert st["raw_bytes"] == 1000 * 12  # a byte per value
    assert any("/scales/" in f for f in storage._files(tiled))  # the scales are counted
    # the tiled rows are the source's values, quantised again to the same codes
    assert torch.equal(tiled.read_torch(HOOKS[0], 0, 104), source.read_torch(HOOKS[0], 0, 104))
    loader = storage.measure_loader(tiled, 40, repeats=1)
    assert loader["rows"] == 1000


def test_bench_refuses_what_it_cannot_run(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["bench", "--latents", "0", "--out", str(tmp_path)]) == 2
    assert "--latents" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--stages", "nonsense"])
