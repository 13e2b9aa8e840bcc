"""Top activations (trainer.evaluation.examples): the collector merges like one sort."""

from __future__ import annotations

import pytest
import torch

from trainer.dictionary.kernels import from_sorted
from trainer.evaluation import examples


def test_collector_merges_exactly_like_one_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    latents, top, total = 7, 4, 0
    collector = examples.TopCollector(latents, top, buffer=10)  # many merges
    seen: list[tuple[int, float, int]] = []
    for batch in range(6):
        rows = torch.randint(0, 9, (30,), generator=gen).sort().values
        cols = torch.randint(0, latents, (30,), generator=gen)
        values = torch.rand(30, generator=gen) + 0.01
        store_rows = torch.arange(9) + 100 * batch
        collector.add(from_sorted(rows, cols, values, 9), store_rows)
        seen += [(int(c), float(v), int(store_rows[r]))
                 for r, c, v in zip(rows, cols, values, strict=True)]
        total += 9
    got = collector.result()
    assert got.tokens == total
    for j in range(latents):
        mine = sorted((v, r) for c, v, r in seen if c == j)[::-1][:top]
        assert got.rows[j][:len(mine)].tolist() == [r for _, r in mine]
        assert got.values[j][:len(mine)].tolist() == pytest.approx([v for v, _ in mine])
        assert int(got.fired[j]) == sum(1 for c, _, _ in seen if c == j)
        assert int(got.histogram[j].sum()) == int(got.fired[j])
