"""Data parallelism (trainer.parallel.distributed): gloo ranks in real processes equal one
rank on the doubled batch."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import RANK_TIMEOUT_S, free_port
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.training.ensemble import Ensemble, adam, warmup_decay

pytestmark = pytest.mark.slow

D, STEPS = 6, 5


CONFIGS = [DictionaryConfig(arch="relu", d_model=D, latents=9, l1=0.05),
           DictionaryConfig(arch="topk", d_model=D, latents=40, k=1, dead_after_tokens=16),
           DictionaryConfig(arch="jumprelu", d_model=D, latents=9, l0=0.01)]


def batches(rows: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(rows, D, generator=gen, dtype=torch.float64) * 2 for _ in range(STEPS)]


def fit(rank: int, world: int) -> Ensemble:
    """STEPS steps; rank r takes rows [r*B, (r+1)*B) of each doubled batch."""
    ens = Ensemble(CONFIGS, adam(3e-2), seed=1, schedule=warmup_decay(STEPS, 2, 0.5))
    ens.to("cpu", torch.float64)
    if world > 1:
        ens.distribute(torch.device("cpu"))
    for x in batches(16):
        half = len(x) // world
        ens.step(x[rank * half:(rank + 1) * half])
    return ens


def _rank(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S))
    try:
        ens = fit(rank, world)
        torch.save([m.state_dict() for m in ens.members], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_rank_on_the_doubled_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "state")
    # TCP, not file://: a FileStore can strand the last rank once the others have left
    mp.start_processes(_rank, args=(2, f"tcp://127.0.0.1:{free_port()}", out), nprocs=2,
                       start_method="spawn")
    one = fit(0, 1)
    for rank in (0, 1):
        states = torch.load(f"{out}.{rank}")
        for member, state in zip(one.members, states, strict=True):
            for key, value in member.state_dict().items():
                torch.testing.assert_close(state[key], value, rtol=1e-9, atol=1e-11,
                                           msg=lambda m, k=key: f"{k}: {m}")
    # the topk member had dead latents, so AuxK and the shared counters were exercised
    assert int(one.members[1].tokens_since_fired.max()) >= 16
