"""Delivery (actstore.loader.delivery): CPU batches made with numpy are torch's arithmetic bit
for bit, for every stored dtype, asked dtype and normalisation; a batch that needs no
conversion is a view of the window, and the window is never written."""

from __future__ import annotations

import pytest
import torch

from actstore.loader.delivery import Normalizer, on_cpu
from actstore.store import format as fmt
from actstore.store.quant import FLOAT8_DTYPES, quantise

STORED = ["bfloat16", "float16", "float32", "float8_e4m3", "float8_e5m2"]
WANT = [None, torch.bfloat16, torch.float16, torch.float32]
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def stored_batch(stored: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """A batch as the window holds it, and its values by torch alone (the reference)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 24, generator=g) * torch.logspace(-30, 30, 24)  # subnormal to huge
    x[3] = 0.0
    x[4, :5] = -0.0
    if stored in FLOAT8_DTYPES:
        q = quantise(x, stored)
        values = q.codes.view(FLOAT8_DTYPES[stored].torch_dtype).float() * q.scales[:, None]
        return (q.codes, q.scales), values
    raw = fmt.to_storage(x, stored)  # float16 overflows to inf: passed on as torch passes it
    return (torch.from_numpy(raw),), fmt.from_storage(raw, stored)


@pytest.mark.parametrize("stored", STORED)
def test_cpu_batches_are_torchs_arithmetic_bit_for_bit(stored: str) -> None:
    host, values = stored_batch(stored)
    before = tuple(h.clone() for h in host)
    mean = torch.linspace(-3.0, 3.0, 24)
    for norm in (Normalizer(None, 1.0), Normalizer(None, 0.37), Normalizer(None, 3e35),
                 Normalizer(mean, 1.9), Normalizer(mean, 1.0)):
        for want in WANT:
            got = on_cpu(host, stored, norm, want)  # type: ignore[arg-type]
            ref = (values if norm.identity else norm.apply(values.float())).to(
                want or values.dtype)
            assert got.dtype == ref.dtype, (norm, want)
            assert torch.equal(got.view(BITS[got.dtype]), ref.view(BITS[ref.dtype])), (norm, want)
            view = stored not in FLOAT8_DTYPES and norm.identity and want in (
                None, values.dtype)
            assert (got.data_ptr() == host[0].data_ptr()) == view, (norm, want)
    assert all(torch.equal(a, b) for a, b in zip(host, before, strict=True))  # window untouched
