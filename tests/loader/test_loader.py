"""The loader (actstore.loader.loader): exactly-once coverage across ranks, determinism,
exact resume, errors, normalisation, CUDA delivery."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore import ActivationStore, CorruptChunkError
from actstore.loader.loader import Loader, LoaderConfig
from actstore.store import format as fmt
from tests.helpers import HOOKS, fill_store, make_layout, make_spec, new_store

CFG = LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=24, with_rows=True)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_row_once_per_epoch_across_ranks(store_url: str, world_size: int) -> None:
    store = new_store(store_url)
    want = fill_store(store)
    rows, steps = [], set()
    for rank in range(world_size):
        loader = Loader(CFG, store=store, rank=rank, world_size=world_size)
        batches = list(loader)
        steps.add(len(batches))
        assert len(batches) == len(loader)
        for b in batches:
            assert b.rows is not None
            for hook in HOOKS:  # rows are aligned across hooks and equal the stored values
                assert torch.equal(b.x[hook], want.activations[hook][b.rows].bfloat16())
            rows.append(b.rows)
    delivered = torch.cat(rows)
    assert len(steps) == 1  # every rank runs the same number of steps: DDP cannot hang
    assert len(set(delivered.tolist())) == len(delivered)  # no row twice
    assert len(delivered) == store.num_rows - store.num_rows % world_size  # only the cut tail


def test_float32_batches_of_a_bf16_store_are_torchs_cast_of_its_rows(tmp_path: Path) -> None:
    # the loader widens bf16 by bit arithmetic (a compiled pass): torch's own cast is the
    # reference
    store = new_store(str(tmp_path / "s"))
    want = fill_store(store)
    for b in Loader(dataclasses.replace(CFG, dtype="float32"), store=store):
        assert b.rows is not None
        for hook in HOOKS:
            assert b.x[hook].dtype == torch.float32
            assert torch.equal(b.x[hook], want.activations[hook][b.rows].bfloat16().float())


def test_same_seed_same_batches_other_seed_other_order(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    fill_store(store)
    a = [b.rows for b in Loader(CFG, store=store)]
    b = [b.rows for b in Loader(CFG, store=store)]
    c = [b.rows for b in Loader(LoaderConfig(**{**CFG.__dict__, "seed": 1}), store=store)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    second_epoch = Loader(CFG, store=store)
    list(second_epoch)
    assert not torch.equal(next(iter(second_epoch)).rows, a[0])  # epochs reshuffle


@pytest.mark.parametrize("stop_after", [1, 3, 4, 12, 13, 15])  # mid-window, window edge, epochs
def test_resume_replays_the_exact_next_batches(store_url: str, stop_after: int) -> None:
    store = new_store(store_url)
    fill_store(store)
    cfg = LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=24, normalize="scale")

    def stream(loader: Loader) -> itertools.chain[object]:
        return itertools.chain.from_iterable(iter(loader) for _ in range(3))  # 3 epochs

    reference = list(itertools.islice(stream(Loader(cfg, store=store, rank=1, world_size=2)),
                                      stop_after + 5))
    first = Loader(cfg, store=store, rank=1, world_size=2)
    it = stream(first)
    for _ in range(stop_after):
        next(it)
    state = first.state_dict()
    resumed = Loader(cfg, store=ActivationStore.open(store_url), rank=1, world_size=2)
    resumed.load_state_dict(state)
    after = list(itertools.islice(stream(resumed), 5))
    assert len(after) == len(reference[stop_after:]) == 5
    for want, got in zip(reference[stop_after:], after, strict=True):
        for hook in HOOKS:
            assert torch.equal(want.x[hook], got.x[hook])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("field", "value", "world"), [
    ("world_size", None, 4), ("seed", 7, 2), ("batch_size", 4, 2), ("shuffle_buffer", 48, 2)])
def test_state_that_would_replay_other_batches_is_refused(tmp_path: Path, field: str,
                                                          value: int | None, world: int) -> None:
    store = new_store(str(tmp_path / "s"))
    fill_store(store)
    state = Loader(CFG, store=store, rank=0, world_size=2).state_dict()
    other = CFG if value is None else dataclasses.replace(CFG, **{field: value})
    mine = world if field == "world_size" else value
    with pytest.raises(ValueError, match=rf"{field}={state[field]}.*{field}={mine}"):
        Loader(other, store=store, rank=0, world_size=world).load_state_dict(state)
    Loader(CFG, store=store, rank=0, world_size=2).load_state_dict(state)  # the same: accepted


def test_drop_last_gives_full_batches_only(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    fill_store(store)
    cfg = LoaderConfig(hooks=HOOKS, batch_size=16, shuffle_buffer=32, drop_last=True,
                       with_rows=True)
    batches = list(Loader(cfg, store=store, rank=0, world_size=3))  # 34 rows -> 2 batches
    assert [len(b.rows) for b in batches] == [16, 16]  # type: ignore[arg-type]


def test_corrupt_chunk_reaches_the_consumer_named(store_url: str) -> None:
    store = new_store(store_url)
    fill_store(store)
    key = fmt.shard_key(fmt.activation_path(HOOKS[1]), 2)
    blob = bytearray(store.location.get(key))
    blob[20] ^= 0xFF
    store.location.put(key, bytes(blob))
    with pytest.raises(CorruptChunkError, match=rf"chunk 8 \(rows 64-71\).*{key}"):
        list(Loader(CFG, store=ActivationStore.open(store_url)))


def test_normalisation_from_store_statistics(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"), dtype="float32")
    fill_store(store)
    for mode in ("scale", "center_scale"):
        cfg = LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=104, normalize=mode)
        x = torch.cat([b.x[HOOKS[0]] for b in Loader(cfg, store=store)]).double()
        centred = x - x.mean(0) if mode == "center_scale" else x
        assert (centred**2).sum(1).mean().item() == pytest.approx(12, rel=1e-5)
        if mode == "center_scale":
            assert x.mean(0).abs().max().item() < 1e-5


def test_bad_requests_are_clear(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    fill_store(store, shards=[0])
    with pytest.raises(ValueError, match="incomplete"):
        Loader(CFG, store=store)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=20)
    fill_store(store, shards=[1, 2, 3])
    with pytest.raises(KeyError, match="not in store"):
        Loader(LoaderConfig(hooks=("nope",), batch_size=8, shuffle_buffer=8), store=store)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_delivery_through_pinned_memory_is_exact(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    want = fill_store(store)
    cfg = LoaderConfig(hooks=HOOKS, batch_size=8, shuffle_buffer=24, with_rows=True,
                       device="cuda", dtype="float32")
    for b in Loader(cfg, store=store):
        assert b.rows is not None
        got = b.x[HOOKS[0]]
        assert got.device.type == "cuda"
        assert got.dtype == torch.float32
        assert torch.equal(got.cpu(), want.activations[HOOKS[0]][b.rows].bfloat16().float())


@pytest.mark.parametrize("dtype", ["float8_e4m3", "float8_e5m2"])
def test_an_8bit_store_delivers_its_dequantised_rows(tmp_path: Path, dtype: str) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(dtype), make_layout())
    fill_store(store)
    every = {h: store.read_torch(h, 0, store.num_rows) for h in HOOKS}  # float32 values
    # windows of 3 and of 13 chunks (the last): several chunks of one shard in a window, not
    # adjacent, whose scales are read as one span
    for cfg in (CFG, dataclasses.replace(CFG, shuffle_buffer=104)):
        seen = 0
        for b in Loader(cfg, store=store):
            assert b.rows is not None
            for hook in HOOKS:  # codes and scales of a row travel together through the shuffle
                assert b.x[hook].dtype == torch.float32
                assert torch.equal(b.x[hook], every[hook][b.rows])
            seen += len(b.rows)
        assert seen == store.num_rows
    cfg = dataclasses.replace(CFG, normalize="center_scale", dtype="bfloat16")
    loader = Loader(cfg, store=store)
    b = next(iter(loader))
    assert b.rows is not None
    norm = loader.normalizer(HOOKS[0])
    assert torch.equal(b.x[HOOKS[0]], norm.apply(every[HOOKS[0]][b.rows]).bfloat16())


def test_row_scales_of_one_shard_read_as_a_span_or_by_runs(tmp_path: Path) -> None:
    layout = dataclasses.replace(make_layout(), shard_rows=64)  # 8 chunks of 8 rows in shard 0
    store = ActivationStore.create(str(tmp_path / "s"), make_spec("float8_e4m3"), layout)
    fill_store(store)
    every = np.empty(store.num_rows, np.float32)
    store.read_scales_into(HOOKS[0], 0, store.num_rows, every)
    loader = Loader(CFG, store=store)
    reads: list[tuple[int, int]] = []
    read = store.read_scales_into

    def counted(hook: str, a: int, b: int, out: np.ndarray) -> None:
        reads.append((a, b))
        read(hook, a, b, out)
    store.read_scales_into = counted  # type: ignore[method-assign]
    # chunks 1 and 2 (one span), chunks 0 and 7 (by runs: 16 rows of a 64-row span), in a
    # window's order (not the store's), to shuffled slots; and one run of chunks 7 and 8, from
    # the end of shard 0 into shard 1 (read across the two)
    for spans, want_reads in (([(16, 24), (8, 16)], [(8, 24)]),
                              ([(56, 64), (0, 8)], [(0, 8), (56, 64)]),
                              ([(56, 72)], [(56, 72)])):
        rows = np.concatenate([np.arange(a, b) for a, b in spans])
        slots = np.random.default_rng(0).permutation(len(rows))
        cuts = np.cumsum([0] + [b - a for a, b in spans])
        runs = [(a, b, slots[c:c + b - a]) for (a, b), c in zip(spans, cuts, strict=False)]
        buf = np.zeros(len(rows), np.float32)
        reads.clear()
        loader._read_scales(HOOKS[0], runs, buf)
        assert sorted(reads) == want_reads
        assert np.array_equal(buf[slots], every[rows])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_an_8bit_store_crosses_to_the_gpu_as_codes_and_dequantises_there(
        tmp_path: Path) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec("float8_e4m3"),
                                   make_layout())
    fill_store(store)
    every = store.read_torch(HOOKS[0], 0, store.num_rows)
    copied: list[tuple[torch.dtype, int]] = []
    real = torch.Tensor.pin_memory

    def pin(t: torch.Tensor) -> torch.Tensor:
        copied.append((t.dtype, t.ndim))
        return real(t)
    cfg = dataclasses.replace(CFG, device="cuda")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "pin_memory", pin)
        for b in Loader(cfg, store=store):
            assert b.rows is not None
            got = b.x[HOOKS[0]]
            assert got.device.type == "cuda"
            assert torch.equal(got.cpu(), every[b.rows])  # the same bits as on the CPU
    # 8-bit codes and 1-D scales cross to the device, never float rows
    assert set(copied) == {(torch.uint8, 2), (torch.float32, 1)}
