"""The dp x tp mesh (trainer.parallel.mesh): its shards cover the latents once."""

from __future__ import annotations

import itertools

import pytest
import torch

from trainer.parallel.mesh import Mesh

pytestmark = pytest.mark.slow

def test_mesh_shards_cover_the_latents_once() -> None:
    for n, tp in ((9, 2), (41, 4), (8, 8), (3, 2)):
        spans = [Mesh(dp=1, tp=tp, dp_rank=0, tp_rank=r).latent_slice(n) for r in range(tp)]
        assert spans[0][0] == 0
        assert spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        # torch.chunk's split: what DTensor's Shard(0), and so the checkpoints, assume
        assert [b - a for a, b in spans] == [len(c) for c in torch.arange(n).chunk(tp)]
