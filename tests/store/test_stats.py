"""HookStats (actstore.store.stats): per-shard statistics merge to the whole store's."""

from __future__ import annotations

import numpy as np
import pytest

from actstore import (
    HookStats,
)
from tests.helpers import HOOKS, fill_store, new_store


def test_stats_merge_to_the_whole_store(store_url: str) -> None:
    store = new_store(store_url, "float32")
    want = fill_store(store)
    for hook in HOOKS:
        x = want.activations[hook].double().numpy()
        stats = store.stats(hook)
        assert stats.count == store.num_rows
        np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12, atol=1e-12)
        assert stats.mean_sq_norm == pytest.approx((x**2).sum(1).mean(), rel=1e-12)


def test_hook_stats_merge_is_order_free() -> None:
    gen = np.random.default_rng(1)
    x = gen.normal(size=(100, 7))
    parts = [HookStats.of(x[:13]), HookStats.of(x[13:60]), HookStats.of(x[60:])]
    merged = HookStats.merge_all(reversed(parts), 7)
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12)
    assert merged.mean_sq_norm == pytest.approx((x**2).sum(1).mean(), rel=1e-12)
