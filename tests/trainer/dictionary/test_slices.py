"""Latent-sliced dictionaries (trainer.dictionary.slices, gather): tp and dp x tp gloo
ranks in real processes end with the parameters of the unsharded run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import RANK_TIMEOUT_S, free_port
from trainer.dictionary.dictionaries import DictionaryConfig
from trainer.dictionary.gather import gathered
from trainer.parallel.distributed import World
from trainer.parallel.mesh import Mesh, make_mesh
from trainer.training.ensemble import Ensemble, adam, warmup_decay

pytestmark = pytest.mark.slow

D, STEPS, ROWS = 6, 5, 16


#: Odd sizes, so tp = 2 splits them unevenly; short dead windows, so AuxK acts.
CONFIGS = [DictionaryConfig(arch="relu", d_model=D, latents=9, l1=0.05),
           DictionaryConfig(arch="topk", d_model=D, latents=41, k=2, dead_after_tokens=16),
           DictionaryConfig(arch="batchtopk", d_model=D, latents=31, k=2,
                            dead_after_tokens=16),
           DictionaryConfig(arch="jumprelu", d_model=D, latents=9, l0=0.01),
           # prefixes that end inside one slice and span both
           DictionaryConfig(arch="matryoshka", d_model=D, latents=31, k=2, widths=(5, 20),
                            dead_after_tokens=16)]


def batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(ROWS, D, generator=gen, dtype=torch.float64) * 2 for _ in range(STEPS)]


def fit(mesh: Mesh | None, world: int) -> Ensemble:
    """STEPS steps; the ranks of dp row r take rows [r*B/dp, (r+1)*B/dp) of each batch."""
    ens = Ensemble(CONFIGS, adam(3e-2), seed=1, schedule=warmup_decay(STEPS, 2, 0.5),
                   mesh=mesh).to("cpu", torch.float64)
    if world > 1:
        ens.distribute(torch.device("cpu"))
    dp, row = (mesh.dp, mesh.dp_rank) if mesh else (1, 0)
    for x in batches():
        share = len(x) // dp
        ens.step(x[row * share:(row + 1) * share])
    return ens


def _rank(rank: int, world: int, tp: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S))
    try:
        mesh = make_mesh(World(rank, world, torch.device("cpu"), owns_group=False), tp)
        ens = fit(mesh, world)
        whole = [gathered(m) for m in ens.members]
        if all(w is not None for w in whole):
            torch.save([w.state_dict() for w in whole if w is not None], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run(tmp_path: Path, world: int, tp: int, name: str) -> dict[int, list[dict[str, torch.Tensor]]]:
    """Every rank's gathered dictionaries (saved by tp rank 0 of each dp row)."""
    out = str(tmp_path / name)
    # TCP, not file://: a FileStore can strand the last rank once the others have left
    mp.start_processes(_rank, args=(world, tp, f"tcp://127.0.0.1:{free_port()}", out),
                       nprocs=world, start_method="spawn")
    return {r: torch.load(f"{out}.{r}") for r in range(world) if Path(f"{out}.{r}").exists()}


def assert_same(got: list[dict[str, torch.Tensor]], want: list[dict[str, torch.Tensor]]
                ) -> None:
    for cfg, a, b in zip(CONFIGS, got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-11,
                                       msg=lambda m, k=key, c=cfg.arch: f"{c} {k}: {m}")


def test_tp2_equals_the_unsharded_run(tmp_path: Path) -> None:
    states = run(tmp_path, 2, 2, "tp2")
    assert list(states) == [0]  # only tp rank 0 holds the gathered dictionaries
    one = fit(None, 1)
    assert_same(states[0], [m.state_dict() for m in one.members])
    # AuxK and the dead counters were exercised
    assert int(one.members[1].tokens_since_fired.max()) >= 16


def test_dp2_tp2_equals_dp2_unsharded(tmp_path: Path) -> None:
    """Against plain data parallelism on the same two halves of each batch (BatchTopK picks
    its top k·B per dp replica, so a one-process run is not the reference)."""
    unsharded = run(tmp_path, 2, 1, "dp2")
    sharded = run(tmp_path, 4, 2, "dp2tp2")
    assert sorted(sharded) == [0, 2]  # tp rank 0 of each dp row
    for rank in sharded:
        assert_same(sharded[rank], unsharded[0])
