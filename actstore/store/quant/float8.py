"""Per-row scaled 8-bit floats: quantise exact rows, dequantise them bit-exactly anywhere.

A row x is stored as codes c = float8(x / s) and one float32 scale s = max|x| / F, where F is
the format's largest finite value (448 for e4m3, 57344 for e5m2). So every row uses the whole
range of the format: its largest element maps to ±F, nothing overflows however large the row
(massive-activation dimensions included), and zeros stay zeros. Values come back as
float32(c) * s, one IEEE float32 multiply, which numpy, torch on CPU and torch on CUDA all
round the same way: a store reads bit-identically everywhere (docs/FORMAT.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from actstore.store.quant import kernels


@dataclass(frozen=True)
class Float8Format:
    """One 8-bit float format as stored (its bit layout is torch's, i.e. OCP FP8)."""

    name: str
    """The storage dtype's name (`float8_e4m3`, `float8_e5m2`)."""
    torch_dtype: torch.dtype
    """The torch dtype whose bit patterns the codes are."""
    max: float
    """Largest finite value: a row's absmax maps to it."""
    mantissa_bits: int
    """Explicit mantissa bits: the relative rounding error of a normal value is at most
    2**-(mantissa_bits + 1)."""
    min_exponent: int
    """Exponent of the smallest normal value; below it the spacing is fixed (subnormals)."""

    @property
    def shift(self) -> int:
        """Left shift putting a code's exponent field at float32's exponent field."""
        return 23 - self.mantissa_bits

    @property
    def bit_mask(self) -> np.int32:
        """After the shift of a sign-extended code: float32's sign bit and the code's 7
        exponent and mantissa bits."""
        return np.uint32(0x80000000 | (0x7F << self.shift)).view(np.int32)

    @property
    def exponent_offset(self) -> int:
        """float32's exponent bias minus the format's (a shifted code is 2**-offset times
        its value)."""
        return 127 - (1 - self.min_exponent)

    @property
    def subnormal_step(self) -> float:
        """Spacing of the subnormal values (also the smallest non-zero magnitude)."""
        return float(2.0 ** (self.min_exponent - self.mantissa_bits))


FLOAT8_DTYPES: dict[str, Float8Format] = {
    "float8_e4m3": Float8Format("float8_e4m3", torch.float8_e4m3fn, 448.0, 3, -6),
    "float8_e5m2": Float8Format("float8_e5m2", torch.float8_e5m2, 57344.0, 2, -14),
}
"""Storage dtype name -> its format."""

BLOCK = 8192
"""Rows quantised at a time: a few MiB of float32 temporaries, whatever the shard's size."""


def is_float8(dtype: str) -> bool:
    return dtype in FLOAT8_DTYPES


def float8_format(dtype: str) -> Float8Format:
    try:
        return FLOAT8_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"{dtype!r} is not an 8-bit storage dtype "
                         f"({', '.join(FLOAT8_DTYPES)})") from None


class Quantised(NamedTuple):
    """Rows in 8 bits, and what the rounding cost."""

    codes: torch.Tensor
    """(n, d) uint8: the float8 bit patterns of x / scale."""
    scales: torch.Tensor
    """(n,) float32: each row's scale."""
    sq_error: float
    """Σ over the rows of ‖x − dequantise(codes, scales)‖², from the exact rows (float64)."""


def quantise(x: torch.Tensor, dtype: str) -> Quantised:
    """Quantise (n, d) rows of any float dtype, on their own device; refuses non-finite rows
    (a scale cannot represent them, and a model that emits them is broken)."""
    fmt = float8_format(dtype)
    if x.ndim != 2:
        raise ValueError(f"expected (rows, d_model) activations, got shape {tuple(x.shape)}")
    if x.device.type == "cpu":
        return _quantise_cpu(x, fmt)
    q = quantise_on_device(x, dtype)
    if int(q.nonfinite):
        raise NonFiniteRowsError(int(q.nonfinite))
    return Quantised(q.codes, q.scales, float(q.sq_error))


class NonFiniteRowsError(ValueError):
    """Rows holding inf or NaN: a scale cannot represent them."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"{rows} rows hold inf or NaN: 8-bit stores need finite activations")


class DeviceQuantised(NamedTuple):
    """`quantise`'s results left on the rows' device (nothing waits for it)."""

    codes: torch.Tensor
    scales: torch.Tensor
    sq_error: torch.Tensor
    """float64 scalar: Σ‖x − dequantise(codes, scales)‖²."""
    nonfinite: torch.Tensor
    """int64 scalar: rows holding inf or NaN (their codes mean nothing; the caller raises)."""


def quantise_on_device(x: torch.Tensor, dtype: str) -> DeviceQuantised:
    """`quantise` with torch kernels on x's own device, without waiting for it: a GPU worker
    quantises each batch where the model ran and waits once per shard."""
    fmt = float8_format(dtype)
    if x.ndim != 2:
        raise ValueError(f"expected (rows, d_model) activations, got shape {tuple(x.shape)}")
    codes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    scales = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    err = torch.zeros((), dtype=torch.float64, device=x.device)
    bad = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, x.shape[0], BLOCK):
        err += _quantise_block(x[i:i + BLOCK], fmt, codes[i:i + BLOCK], scales[i:i + BLOCK],
                               bad)
    return DeviceQuantised(codes, scales, err, bad)


def _quantise_cpu(x: torch.Tensor, fmt: Float8Format) -> Quantised:
    """`quantise` on a CPU: the same codes, scales and error as `_quantise_block` (the same
    IEEE float32 operations, and torch's float8 rounding done on the bits), in one compiled
    pass over each row while it is in the cache (`kernels.quantise_rows`). torch's kernels,
    multithreaded and one value at a time for float8, cost several times the CPU here, and
    each call stalls when the machine is loaded (benchmarks/README.md, `fp8_store.py`)."""
    codes, scales, err, bad = kernels.quantise_rows(
        x.detach().to(torch.float32).numpy(), fmax=fmt.max, step=fmt.subnormal_step,
        shift=fmt.shift, offset=fmt.exponent_offset << fmt.mantissa_bits)
    if bad:
        raise NonFiniteRowsError(bad)
    return Quantised(torch.from_numpy(codes), torch.from_numpy(scales), err)


def _quantise_block(x: torch.Tensor, fmt: Float8Format, codes: torch.Tensor,
                    scales: torch.Tensor, nonfinite: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Fill `codes` and `scales` for rows `x`; returns their squared error (float64). Rows
    with inf or NaN raise here, or, given `nonfinite`, are counted into it (no wait for the
    device; the caller raises)."""
    x32 = x.to(torch.float32)
    absmax = (torch.linalg.vector_norm(x32, ord=float("inf"), dim=1) if x32.shape[1]
              else x32.new_zeros(x32.shape[0]))
    if nonfinite is not None:  # such rows become zeros here: never stored, the caller raises
        finite = torch.isfinite(absmax)
        nonfinite += (~finite).sum()
        absmax = torch.where(finite, absmax, 0.0)
        x32 = torch.where(finite[:, None], x32, 0.0)
    elif not bool(torch.isfinite(absmax).all()):
        raise NonFiniteRowsError(int((~torch.isfinite(absmax)).sum()))
    scale = absmax / fmt.max
    # An all-zero row (or one so small its scale underflows) gets scale 1: codes 0, values 0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    # The clamp only catches x/s a rounding above ±max (torch turns e4m3 overflow into NaN).
    q = (x32 / scale[:, None]).clamp_(-fmt.max, fmt.max).to(fmt.torch_dtype)
    codes.copy_(q.view(torch.uint8))
    scales.copy_(scale)
    # Against exactly what readers get. The difference of a value and its rounding is exact in
    # float32 (they are within a factor of two, or the rounding is zero); it is squared and
    # summed in float64 (a float32 square of a 1e20 error would overflow).
    diff = (x32 - dequantise(codes, scales, fmt.name)).reshape(-1).to(torch.float64)
    return torch.dot(diff, diff)


def dequantise(codes: torch.Tensor, scales: torch.Tensor, dtype: str) -> torch.Tensor:
    """(n, d) float32 rows from codes and scales, on their device (on a GPU: after the 8-bit
    copy, so a batch crosses PCIe at a byte per value)."""
    fmt = float8_format(dtype)
    if codes.device.type == "cpu":
        # torch converts float8 on a CPU one value at a time, and its multithreaded kernels
        # stall on a loaded machine: one compiled pass of bit arithmetic gives the same bits
        # several times faster (benchmarks/README.md, `fp8_store.py`).
        return torch.from_numpy(dequantise_numpy(codes.numpy(), scales.numpy(), dtype))
    return codes.view(fmt.torch_dtype).to(torch.float32) * scales.to(torch.float32)[:, None]


@cache
def code_values(dtype: str) -> NDArray[np.float32]:
    """The 256 values of the format's codes, as float32 (a lookup table for numpy readers)."""
    fmt = float8_format(dtype)
    values: NDArray[np.float32] = (torch.arange(256, dtype=torch.int32).to(torch.uint8)
                                   .view(fmt.torch_dtype).to(torch.float32).numpy())
    values.flags.writeable = False
    return values


def dequantise_numpy(codes: NDArray[Any], scales: NDArray[Any], dtype: str,
                     mean: NDArray[np.float32] | None = None, scale: float = 1.0
                     ) -> NDArray[np.float32]:
    """The same float32 values as `dequantise`, on the host, for every code a writer stores
    (never the codes FORMAT.md says are never written: NaN, and e5m2's infinities); then,
    if given, (x − mean) × scale in float32, as a reader normalising them would.

    No table lookup (a gather per value): a code's sign moved to bit 31 and its other 7 bits
    shifted to the top of float32's mantissa make a float32 whose value is the code's times
    2**-k, k = 127 - bias (subnormal codes become float32 subnormals, exactly). One float32
    multiply by scale * 2**k (exact: a power of two) then rounds the same real number
    float32(code) * scale rounds, so the bits are the same. One compiled pass
    (`kernels.float8_rows`).
    """
    fmt = float8_format(dtype)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    scales = np.asarray(scales, np.float32)
    if not _subnormals_work():  # flush-to-zero set in this thread: subnormal codes would be 0
        table: NDArray[np.float32] = code_values(dtype)[codes] * scales[:, None]
        return kernels.normalise_numpy(table, mean, scale)
    factor = scales.astype(np.float64) * 2.0 ** fmt.exponent_offset
    # A row whose scale is too large to fold 2**k into: the codes' own values first (exact),
    # then the scale.
    fits = factor <= np.finfo(np.float32).max
    after = np.where(fits, np.float32(1), scales).astype(np.float32)
    first = np.where(fits, factor, 2.0 ** fmt.exponent_offset).astype(np.float32)
    return kernels.float8_rows(codes.view(np.int8), first, after, shift=fmt.shift,
                               mask=fmt.bit_mask, mean=mean, scale=scale)


def _subnormals_work() -> bool:
    """False where this thread's float unit treats subnormals as zero
    (`torch.set_flush_denormal(True)`)."""
    return bool(np.float32(1e-45) * np.float32(2.0) != 0)
