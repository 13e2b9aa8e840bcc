"""Held-out slices (actstore.loader.holdout): the loader reads only the training shards,
evaluation only whole contexts that no training shard touches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.loader import holdout
from actstore.loader.loader import Loader, LoaderConfig
from tests.helpers import HOOKS, fill_store, straddling_store


def test_loader_reads_only_the_training_shards_once_per_epoch(tmp_path: Path) -> None:
    store = straddling_store(str(tmp_path / "s"))
    want = fill_store(store)
    s = holdout.partition(store, 0.3)
    assert s == holdout.Partition((0, 1), (2, 3))
    for world_size in (1, 2):
        rows = []
        for rank in range(world_size):
            cfg = LoaderConfig(hooks=HOOKS, batch_size=6, shuffle_buffer=12, with_rows=True,
                               shards=s.train_shards)
            loader = Loader(cfg, store=store, rank=rank, world_size=world_size)
            for b in loader:
                assert b.rows is not None
                assert torch.equal(b.x[HOOKS[0]], want.activations[HOOKS[0]][b.rows].bfloat16())
                rows += b.rows.tolist()
        assert sorted(rows) == list(range(60))  # shards 0 and 1, each row once


def test_held_out_rows_are_whole_contexts_never_trained_on(tmp_path: Path) -> None:
    store = straddling_store(str(tmp_path / "s"))
    want = fill_store(store)
    s = holdout.partition(store, 0.3)
    ctx = want.index.context
    trained = set(ctx[:60].tolist())
    batches = list(holdout.held_out_batches(store, HOOKS[0], s, max_rows=1000, batch_rows=7))
    rows = torch.cat([b.rows for b in batches])
    x = torch.cat([b.x for b in batches])
    expected = [r for r in range(60, 104) if int(ctx[r]) not in trained]
    assert sorted(rows.tolist()) == expected
    assert len(expected) == 104 - 64  # the context straddling the boundary was dropped
    assert holdout.first_held_out_context(store, s) == max(trained) + 1
    assert torch.equal(x, want.activations[HOOKS[0]][rows].bfloat16().float())
    capped = list(holdout.held_out_batches(store, HOOKS[0], s, max_rows=5, batch_rows=7))
    assert sum(len(b.rows) for b in capped) == 5


def test_bad_holdouts_are_refused(tmp_path: Path) -> None:
    store = straddling_store(str(tmp_path / "s"))
    fill_store(store)
    assert holdout.partition(store, 0.0) == holdout.Partition((0, 1, 2, 3), ())
    assert holdout.partition(store, 0.0).train_shards is None
    with pytest.raises(ValueError, match="none to train on"):
        holdout.partition(store, 0.8)
    with pytest.raises(ValueError, match="nothing is held out"):
        next(holdout.held_out_batches(store, HOOKS[0], holdout.partition(store, 0.0), 10))
    with pytest.raises(ValueError, match=r"shards \[7\] are not in store"):
        Loader(LoaderConfig(hooks=HOOKS, batch_size=6, shuffle_buffer=12, shards=(0, 7)),
               store=store)
    a = Loader(LoaderConfig(hooks=HOOKS, batch_size=6, shuffle_buffer=12, shards=(0,)),
               store=store)
    b = Loader(LoaderConfig(hooks=HOOKS, batch_size=6, shuffle_buffer=12), store=store)
    with pytest.raises(ValueError, match="shards"):
        b.load_state_dict(a.state_dict())  # another slice: the batches would differ
    assert np.array_equal(holdout.partition(store, 0.01).held_out, (3,))  # at least one shard


HOOK = HOOKS[0]  # d_model 12


def test_training_sample_ranks_cover_the_sample_once(tmp_path: Path) -> None:
    from actstore.loader import holdout

    store = straddling_store(str(tmp_path / "s"))
    fill_store(store)
    part = holdout.partition(store, 0.5)
    whole = torch.cat(list(holdout.training_sample(store, HOOK, part, 50, block=7)))
    parts = [torch.cat(list(holdout.training_sample(store, HOOK, part, 50, block=7, rank=r,
                                                    world=3))) for r in range(3)]
    assert 30 < len(whole) <= 50  # up to 50: blocks are cut at shard ends
    assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, whole.tolist()))
