"""Compiled CPU kernels: stored bits to float32 values, normalised, in one pass over a batch;
and float32 rows to 8-bit codes, in one pass over each row.

    bf16 (uint16) rows               ──widen──────────────┐
    8-bit codes (int8) + row scales  ──bits × row factor──┴─▶ float32 ─▶ (x − mean) × scale
    float32 rows ──absmax─▶ row scales ──x / scale, rounded on the bits─▶ codes, Σ error²

numpy needs a pass over the whole batch per step (three to dequantise 8-bit codes, one more
per normalisation step), each through memory, since a batch outgrows the cache. numba
compiles one loop that takes a row through every step while it is in L1, several times
cheaper (benchmarks/README.md, `fp8_store.py`). The steps are the same IEEE float32
operations in the same order as torch's and the numpy fallback's (no fused multiply-add:
fastmath is off), so every path gives the same bits (tests/store/test_float8.py,
tests/loader/test_delivery.py).

numba is imported and the kernels compiled (or loaded from numba's cache) on first use, so
commands that never decode or quantise rows do not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _rows(raw: Any, shift: Any, mask: Any, factor: Any, after: Any,  # noqa: PLR0917
          mean: Any, scale: Any, out: Any) -> None:  # (compiled calls are positional)
    """out[i] = ((bits(raw[i]) [× factor[i] [× after[i]]]) − mean) × scale, each step in
    float32, row by row; bits(v) = (int32(v) << shift) & mask, as float32.

    bf16 (raw uint16, zero-extended): shift 16, mask all ones, no factor: the top half of a
    float32. 8-bit codes (raw int8, sign-extended): the sign at float32's bit 31 and the other
    7 bits at the top of the mantissa, the code's value times 2**-k; factor = scale × 2**k,
    or 2**k with after = scale for a row whose scale is too large to fold 2**k into. A step
    whose operand is empty or 1 is skipped (its result would be the same bits)."""
    n, d = raw.shape
    bits = out.view(np.int32)
    scaled, centre = factor.shape[0] > 0, mean.shape[0] > 0
    for i in range(n):
        for j in range(d):
            bits[i, j] = (np.int32(raw[i, j]) << shift) & mask
        if scaled:
            f = factor[i]
            for j in range(d):
                out[i, j] *= f
            g = after[i]
            if g != 1:
                for j in range(d):
                    out[i, j] *= g
        if centre:
            for j in range(d):
                out[i, j] -= mean[j]
        if scale != 1:
            for j in range(d):
                out[i, j] *= scale


def _row_scales(x: Any, fmax: Any, scales: Any) -> int:
    """scales[i] = max|x[i]| / fmax in float32 (1 where that is 0: an all-zero row, or one
    whose scale underflows, gets codes 0); returns the count of rows holding inf or NaN."""
    zero, one, bad = np.float32(0), np.float32(1), 0
    for i in range(x.shape[0]):
        amax, finite = zero, True
        for j in range(x.shape[1]):
            a = abs(x[i, j])
            if not a < np.float32(np.inf):
                finite = False
            elif a > amax:
                amax = a
        s = amax / fmax
        scales[i] = s if s > zero else one
        bad += 0 if finite else 1
    return bad


def _encode(x: Any, scales: Any, fmax: Any, step: Any, shift: Any,  # noqa: PLR0917
            offset: Any, codes: Any, y: Any) -> float:
    """codes[i] of the finite rows x[i] / scales[i] as torch rounds float32 to float8 (to
    nearest, ties to even), in integer arithmetic on the bits: a subnormal result is the
    nearest multiple of `step`, counted in steps; a normal one keeps float32's top bits,
    rounded at bit `shift`, its exponent rebased by `offset`. Returns Σ‖x − value‖² (float64),
    each code's value rebuilt the other way (the bits readers get) times the scale in
    float32. `y` is a row of scratch space."""
    d = x.shape[1]
    ybits, inv_step = y.view(np.int32), np.float32(1) / step
    min_normal = (offset >> (23 - shift) << 23) + (1 << 23)
    half, err = (1 << (shift - 1)) - 1, 0.0
    for i in range(x.shape[0]):
        s = scales[i]
        for j in range(d):
            y[j] = min(max(x[i, j] / s, -fmax), fmax)
        for j in range(d):
            b = ybits[j]
            mag = b & 0x7FFFFFFF
            if mag < min_normal:
                v = abs(y[j]) * inv_step  # exact: a power of two, and v < 2**mantissa
                m = int(np.floor(v))
                rest = v - m
                m += 1 if rest > 0.5 or (rest == 0.5 and m & 1) else 0
            else:
                m = ((mag + half + ((mag >> shift) & 1)) >> shift) - offset
            codes[i, j] = ((b >> 24) & 0x80) | m
            if m < (1 << (23 - shift)):
                y[j] = np.float32(m) * step
            else:
                ybits[j] = (m + offset) << shift
            y[j] = x[i, j] - (-y[j] if b < 0 else y[j]) * s  # exact (`float8._quantise_block`)
        # Σ diff² in float64 (a float32 square of 1e20 overflows), in four interleaved sums:
        # one sum is a chain of dependent adds, which took most of the time
        r0, r1, r2, r3 = 0.0, 0.0, 0.0, 0.0
        for j in range(0, d - d % 4, 4):
            r0 += np.float64(y[j]) * np.float64(y[j])
            r1 += np.float64(y[j + 1]) * np.float64(y[j + 1])
            r2 += np.float64(y[j + 2]) * np.float64(y[j + 2])
            r3 += np.float64(y[j + 3]) * np.float64(y[j + 3])
        for j in range(d - d % 4, d):
            r0 += np.float64(y[j]) * np.float64(y[j])
        err += (r0 + r1) + (r2 + r3)
    return err


@cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    try:
        import numba
    except ImportError as e:  # a core dependency: only a broken install lacks it
        raise ImportError("actstore needs numba to decode rows on a CPU: "
                          "pip install 'numba>=0.60' (or reinstall actstore)") from e
    # nogil: read threads decode chunks while a batch is made; cache: compiled once per
    # machine, not once per process (numba keeps it beside this file or in its user cache).
    jit = partial(numba.njit, nogil=True, boundscheck=False, error_model="numpy")
    try:
        return jit(cache=True)(fn)
    except RuntimeError:  # no writable place for the cache: compiled in each process
        return jit()(fn)


def quantise_rows(x: NDArray[np.float32], *, fmax: float, step: float, shift: int,
                  offset: int) -> tuple[NDArray[np.uint8], NDArray[np.float32], float, int]:
    """(codes, scales, squared error, rows holding inf or NaN) of float32 rows (see
    `_row_scales` and `_encode`; with non-finite rows, the codes and error mean nothing).
    fmax is the format's largest value, step its subnormal spacing, shift the mantissa bits
    float32 has beyond the format's, offset the exponent rebase (float32's bias minus the
    format's) times 2**mantissa bits."""
    if x.ndim != 2:
        raise ValueError(f"expected (rows, d_model) float32 rows, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    codes, scales = np.empty(x.shape, np.uint8), np.empty(len(x), np.float32)
    bad = int(_compiled(_row_scales)(x, np.float32(fmax), scales))
    if bad:  # the caller refuses the rows: no codes
        return codes, scales, float("nan"), bad
    err = _compiled(_encode)(x, scales, np.float32(fmax), np.float32(step), np.int32(shift),
                             np.int32(offset), codes, np.empty(x.shape[1], np.float32))
    return codes, scales, float(err), 0


_NONE = np.zeros(0, np.float32)


def float8_rows(codes: NDArray[np.int8], factor: NDArray[np.float32],
                after: NDArray[np.float32], *, shift: int, mask: np.int32,
                mean: NDArray[np.float32] | None = None, scale: float = 1.0
                ) -> NDArray[np.float32]:
    """(n, d) float32 values of 8-bit codes (see `_rows`), normalised if asked."""
    if codes.ndim != 2:
        raise ValueError(f"8-bit codes must be (rows, d_model), got shape {codes.shape}")
    for name, per_row in (("factor", factor), ("after", after)):
        if per_row.shape != (len(codes),):  # the kernel checks no bounds
            raise ValueError(f"{len(codes)} rows of codes need {len(codes)} scales, got "
                             f"{name} of shape {per_row.shape}")
    out = np.empty(codes.shape, np.float32)
    _compiled(_rows)(np.ascontiguousarray(codes), np.int32(shift), np.int32(mask),
                     _f32(factor), _f32(after), _mean(mean, codes.shape[1]),
                     np.float32(scale), out)
    return out


def bf16_rows(raw: NDArray[np.uint16], *, mean: NDArray[np.float32] | None = None,
              scale: float = 1.0) -> NDArray[np.float32]:
    """float32 values of bf16 bit patterns of any shape (rows are the last axis), normalised
    if asked."""
    rows = raw.reshape(int(np.prod(raw.shape[:-1])), raw.shape[-1] if raw.ndim else 1)
    out = np.empty(rows.shape, np.float32)
    _compiled(_rows)(np.ascontiguousarray(rows), np.int32(16), np.int32(-1), _NONE, _NONE,
                     _mean(mean, rows.shape[1]), np.float32(scale), out)
    return out.reshape(raw.shape)


def normalise_numpy(x: NDArray[np.float32], mean: NDArray[np.float32] | None, scale: float
                    ) -> NDArray[np.float32]:
    """(x − mean) × scale with numpy, as the kernels do it (for the rows they do not take);
    x itself is never written (it may be a store's own float32 rows)."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN pass, as in torch
        if mean is not None:
            x = np.subtract(x, _mean(mean, x.shape[1]))
            if scale != 1:
                np.multiply(x, np.float32(scale), out=x)
            return x
        return np.multiply(x, np.float32(scale)) if scale != 1 else x


def _f32(a: NDArray[Any]) -> NDArray[np.float32]:
    return np.ascontiguousarray(a, dtype=np.float32)


def _mean(mean: NDArray[Any] | None, d: int) -> NDArray[np.float32]:
    if mean is None:
        return _NONE
    if mean.shape != (d,):
        raise ValueError(f"a mean of shape {mean.shape} for rows of {d} values")
    return _f32(mean)
