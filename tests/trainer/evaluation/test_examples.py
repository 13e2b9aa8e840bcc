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


def _batches(latents: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """Batches of codes, each (row, latent) once: (rows, cols, values, store_rows)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for batch in range(8):
        fired = torch.rand(9, latents, generator=gen) < 0.5
        rows, cols = fired.nonzero(as_tuple=True)
        values = torch.rand(len(rows), generator=gen) + 0.01
        out.append((rows, cols, values, torch.arange(9) + 100 * batch))
    return out


@pytest.mark.parametrize("packed", [True, False])
def test_sample_is_the_firings_of_largest_hash_however_the_rows_are_split(
        packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not packed:  # the three-sort merge of dictionaries of >= 2^20 latents
        monkeypatch.setattr(examples, "_PACKED", 0)
    latents, sample = 5, 6
    batches = _batches(latents, 1)
    whole = examples.TopCollector(latents, 3, buffer=16, sample=sample)
    halves = [examples.TopCollector(latents, 3, buffer=7, sample=sample) for _ in range(2)]
    for i, (rows, cols, values, store_rows) in enumerate(batches):
        whole.add(from_sorted(rows, cols, values, 9), store_rows)
        halves[i % 2].add(from_sorted(rows, cols, values, 9), store_rows)
    got = whole.result()
    merged = examples.TopCollector(latents, 3, sample=sample)
    for h in halves:
        merged.absorb(h.result())
    split = merged.result()
    assert got.sample_rows is not None
    assert got.sample_values is not None
    assert split.sample_rows is not None
    assert torch.equal(got.sample_rows, split.sample_rows)
    assert torch.equal(got.rows, split.rows)
    for j in range(latents):  # the reference: hash every firing, keep the largest, by value
        firings = [(int(s[r]), float(v)) for rows, cols, values, s in batches
                   for r, c, v in zip(rows, cols, values, strict=True) if c == j]
        hashed = sorted(firings, key=lambda f: int(examples.row_hash(
            torch.tensor(f[0]), torch.tensor(j), latents)), reverse=True)[:sample]
        want = sorted(hashed, key=lambda f: -f[1])
        assert got.sample_rows[j].tolist() == [r for r, _ in want]
        assert got.sample_values[j].tolist() == pytest.approx([v for _, v in want])


def test_sample_spreads_over_the_activations() -> None:
    """A uniform sample: its median sits near the median of all the firings (a latent
    firing on 4,000 rows, 64 kept), where the top list sits at the maximum."""
    n, sample = 4000, 64
    values = torch.linspace(0.01, 1.0, n)
    c = examples.TopCollector(1, 4, buffer=1000, sample=sample)
    for lo in range(0, n, 500):
        rows = torch.arange(500)
        c.add(from_sorted(rows, torch.zeros(500, dtype=torch.int64), values[lo:lo + 500], 500),
              rows + lo)
    got = c.result()
    assert got.sample_values is not None
    assert float(got.sample_values[0].median()) == pytest.approx(0.5, abs=0.15)
    assert float(got.values[0, -1]) > 0.99
