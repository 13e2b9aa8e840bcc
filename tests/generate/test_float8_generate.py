"""`actstore generate --store-dtype float8_*` on a real model (the bundled MiniLM): the 8-bit
store holds the exact rows of the float32 store of the same request, quantised, with the
outlier dimensions of a real residual stream; its key is its own; `info` shows its floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actstore import ActivationStore
from actstore.generate.pipeline import generate
from actstore.shell.main import main
from actstore.store.quant import FLOAT8_DTYPES
from tests.gen_fixtures import minilm_cfg

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
