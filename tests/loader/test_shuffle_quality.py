"""The shuffle-quality metric (actstore.loader.shuffle_quality) on a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actstore import ActivationStore, Layout
from actstore.loader.loader import Loader, LoaderConfig
from actstore.loader.shuffle_quality import shuffle_quality
from tests.helpers import HOOKS, fill_store, make_spec


def test_shuffle_quality_metric_on_a_store_with_a_known_answer(tmp_path: Path) -> None:
    # Rows in context order and one context per chunk (8 rows): a window of one chunk makes
    # every batch a single context; a window of the whole store is a perfect shuffle.
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(), Layout(
        num_rows=104, d_model={HOOKS[0]: 12, HOOKS[1]: 5}, shard_rows=32, chunk_rows=8))
    fill_store(store, shuffle=False)
    worst = shuffle_quality(store, (b.rows for b in Loader(  # type: ignore[misc]
        LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=8, with_rows=True), store=store)))
    assert worst.observed == 1.0
    assert worst.perfect == pytest.approx(13 * 8 * 7 / (104 * 103))
    mixed = [shuffle_quality(store, (b.rows for b in Loader(  # type: ignore[misc]
        LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=104, seed=s, with_rows=True),
        store=store))).ratio for s in range(10)]
    assert 0.5 < float(np.mean(mixed)) < 1.5
