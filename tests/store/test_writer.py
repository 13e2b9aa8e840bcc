"""ShardWriter, write_shard and break_lease (actstore.store.writer): leases, commits,
retries after a dead writer, concurrent writers, bad rows and a full disk."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore import (
    ActivationStore,
    RowIndex,
    ShardCommittedError,
    ShardLeaseError,
    ShardWriter,
    StoreFullError,
    break_lease,
    verify,
)
from tests.helpers import HOOKS, fill_store, make_layout, make_spec, new_store


def test_interrupted_shard_is_not_done_and_is_retried(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[0, 2])
    # A writer that dies after writing its data but before the commit marker.
    dead = ShardWriter(store, 1, writer_id="dead")
    dead.acquire()
    dead.write({h: torch.ones(32, d) for h, d in store.layout.d_model.items()},
               RowIndex(*(np.zeros(32),) * 3))
    assert store.shards_done() == [0, 2]
    assert not store.complete
    assert not verify(store).ok
    with pytest.raises(ShardLeaseError, match="'dead'"):
        ShardWriter(store, 1, writer_id="retry").acquire()
    assert break_lease(store, 1)["writer"] == "dead"  # the job knows the writer died
    want = fill_store(store, shards=[1, 3])
    assert store.complete
    assert torch.equal(store.read_torch(HOOKS[1], 32, 64),
                       want.activations[HOOKS[1]][32:64].bfloat16())
    report = verify(store)
    assert report.ok, report.problems


def test_committed_shard_is_never_rewritten(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    with pytest.raises(ShardCommittedError):
        ShardWriter(store, 0, writer_id="again").acquire()


def test_writer_whose_lease_was_broken_cannot_commit(store_url: str) -> None:
    store = new_store(store_url)
    want = fill_store(store, shards=[])
    slow = ShardWriter(store, 0, writer_id="slow")
    slow.acquire()
    break_lease(store, 0)  # the job declared `slow` dead and retried the shard
    fill_store(store, shards=[0])
    acts = {h: torch.zeros(32, d) for h, d in store.layout.d_model.items()}
    with pytest.raises(ShardLeaseError, match="lost its lease"):
        slow.write(acts, RowIndex(*(np.zeros(32),) * 3))
    assert torch.equal(store.read_torch(HOOKS[0], 0, 32),
                       want.activations[HOOKS[0]][:32].bfloat16())


def test_concurrent_writers_of_one_shard(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store, shards=[])
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def attempt() -> None:
        barrier.wait()
        try:
            fill_store(ActivationStore.open(store_url), seed=0, shards=[0])
            outcomes.append("won")
        except (ShardLeaseError, ShardCommittedError):
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1, outcomes
    assert store.shards_done() == [0]
    assert verify(store, partial=True).ok


def test_full_disk_is_a_clear_error_and_keeps_committed_shards(tiny_disk: Path) -> None:
    url = str(tiny_disk / "store")
    layout = make_layout(num_contexts=400)  # 3200 rows x (12 + 5) floats: does not fit
    store = ActivationStore.create(url, make_spec(dtype="float32"), layout)
    with pytest.raises(StoreFullError, match=r"no space left writing shard \d+; committed"):
        fill_store(store)
    done = store.shards_done()
    assert 0 < len(done) < store.num_shards
    failed = len(done)  # shards are written in order: the first one not done is the one that hit
    assert not store.location.exists(f"leases/shard-{failed:06d}/zarr.json")  # lease dropped
    assert not [n for n in os.listdir(tiny_disk / "store" / "activations" / HOOKS[0] / "c")
                if n.startswith(".")]  # no temp files left behind
    report = verify(store, partial=True)
    assert report.ok, report.problems
    with ShardWriter(store, failed, writer_id="after-cleanup"):
        pass  # the failed shard can be taken again: nothing blocks a resume


def test_bad_rows_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(), make_layout())
    fill_store(store, shards=[])
    with ShardWriter(store, 0, writer_id="w") as w, pytest.raises(Exception, match=r"\(32, 12\)"):
        w.write({HOOKS[0]: torch.zeros(31, 12), HOOKS[1]: torch.zeros(32, 5)},
                fill_store(store, shards=[]).index)
    assert not store.location.exists("activations/encoder.layer.1/c/0/0")
    assert store.shards_done() == []
