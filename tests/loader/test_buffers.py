"""Window buffers (actstore.loader.buffers): reused only once nothing made from them is left,
so batches a consumer holds are never overwritten."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.loader.buffers import BufferPool
from actstore.loader.loader import Loader, LoaderConfig
from tests.helpers import HOOKS, fill_store, new_store


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_buffer_comes_back_only_when_nothing_made_from_it_is_left() -> None:
    pool = BufferPool(capacity=16, keep=2)
    first = pool.take(16, (3,), np.uint16)
    where = address(first)
    batch = torch.from_numpy(first)[4:8]  # what a consumer holds: a torch view of a slice
    del first
    gc.collect()
    assert pool.kept() == 0
    second = pool.take(10, (3,), np.uint16)  # the held one is not handed out again
    assert address(second) != where
    assert second.shape == (10, 3)
    del batch
    gc.collect()
    assert pool.kept() == 1
    third = pool.take(16, (3,), np.uint16)  # now it is
    assert address(third) == where
    other = pool.take(16, (3,), np.float32)  # another kind never shares it
    assert address(other) not in (where, address(second))


def test_a_numpy_view_alone_keeps_a_buffer_out_of_the_pool() -> None:
    pool = BufferPool(capacity=8, keep=2)
    first = pool.take(8, (), np.float32)
    first[:] = 1.0
    part = first[2:5].view(np.int32)  # numpy derivatives only: no torch tensor in between
    where = address(first)
    del first
    gc.collect()
    assert pool.kept() == 0
    second = pool.take(8, (), np.float32)
    second[:] = 2.0
    assert address(second) != where
    assert (part.view(np.float32) == 1.0).all()
    del part
    gc.collect()
    assert pool.kept() == 1


def test_the_pool_keeps_at_most_keep_unused_buffers() -> None:
    pool = BufferPool(capacity=4, keep=2)
    taken = [pool.take(4, (), np.float32) for _ in range(5)]
    del taken
    gc.collect()
    assert pool.kept() == 2
    with pytest.raises(ValueError, match="5 rows asked of a pool of 4-row buffers"):
        pool.take(5, (), np.float32)


def test_batches_held_across_epochs_keep_their_rows(tmp_path: Path) -> None:
    # bf16 batches delivered as bf16 are views of their window: holding a whole epoch's while
    # the next epochs run (and reuse the windows that are free) must not change them
    store = new_store(str(tmp_path / "s"))
    want = fill_store(store)
    loader = Loader(LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=24,
                                 with_rows=True), store=store)
    held = list(loader)
    window = {b.x[HOOKS[0]].untyped_storage().data_ptr() for b in held[:3]}
    assert len(window) == 1  # the first window's three batches are views of one buffer
    for _ in range(2):
        later = list(loader)
        del later
        gc.collect()
    assert loader._windows.kept() > 0  # the later epochs' windows came back to the pool
    for b in held:
        assert b.rows is not None
        for hook in HOOKS:
            assert torch.equal(b.x[hook], want.activations[hook][b.rows].bfloat16())


def test_an_8bit_epoch_reuses_its_windows_and_reads_the_same(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), dtype="float8_e4m3")
    fill_store(store)
    every = store.read_torch(HOOKS[0], 0, store.num_rows)
    cfg = LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=24, with_rows=True,
                       dtype="float32")
    loader = Loader(cfg, store=store)
    for _ in range(3):  # float32 batches are new arrays: the windows return at once
        for b in loader:
            assert b.rows is not None
            assert torch.equal(b.x[HOOKS[0]], every[b.rows])
    assert loader._windows.kept() > 0
