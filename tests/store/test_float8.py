"""8-bit stores (actstore.store.quant and the float8 dtypes of the format): the rounding is
the nearest code of the format, within its error bound on outlier rows, zeros stay zeros,
stores read bit-exactly with plain zarr and numpy, and the noise floor is what it says."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from numpy.typing import NDArray

from actstore import ActivationStore, FormatError, RowIndex, verify, write_shard
from actstore.shell.summary import describe
from actstore.store.quant import FLOAT8_DTYPES, code_values, dequantise, quantise
from actstore.store.quant.float8 import NonFiniteRowsError
from actstore.store.spec import StorageDtype, default_codec
from tests.helpers import HOOKS, fill_store, make_layout, make_spec

DTYPES = list(FLOAT8_DTYPES)


def decoded_by_bits(dtype: str) -> NDArray[np.float64]:
    """The 256 code values from the OCP FP8 bit layout (sign, exponent, mantissa), written
    out by hand as docs/FORMAT.md gives it: the reference that torch's float8 must match."""
    exp_bits, bias = (4, 7) if dtype == "float8_e4m3" else (5, 15)
    man_bits = 7 - exp_bits
    b = np.arange(256)
    sign = np.where(b >> 7, -1.0, 1.0)
    e = (b >> man_bits) & ((1 << exp_bits) - 1)
    m = (b & ((1 << man_bits) - 1)) / (1 << man_bits)
    value = sign * np.where(e > 0, 2.0 ** (e - bias) * (1 + m), 2.0 ** (1 - bias) * m)
    if dtype == "float8_e4m3":  # e4m3fn: no infinities, only S.1111.111 is NaN
        value[(e == 15) & (m == 7 / 8)] = np.nan
    else:  # e5m2: IEEE-like, all-ones exponent is inf (m = 0) or NaN
        value[e == 31] = np.where(m[e == 31] == 0, sign[e == 31] * np.inf, np.nan)
    return value


def outlier_rows(d: int = 64) -> torch.Tensor:
    """Rows like an LLM residual stream: a "massive activation" dimension hundreds to
    thousands of times the median, exact zeros, an all-zero row, and rows at the edges of
    float32's range."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, d, generator=g)
    x[:20, 3] *= 1000.0  # massive activations
    x[5:25, 7] = 0.0  # zeros inside rows
    x[30] = 0.0  # an all-zero row
    x[31] *= 1e30
    x[32] *= 1e-30
    x[33, 0] = 3e38  # near float32's largest
    return x


@pytest.mark.parametrize("dtype", DTYPES)
def test_code_values_follow_the_bit_layout(dtype: str) -> None:
    np.testing.assert_array_equal(code_values(dtype), decoded_by_bits(dtype).astype(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_value_is_the_nearest_code_within_the_format_bound(dtype: str) -> None:
    fmt = FLOAT8_DTYPES[dtype]
    x = outlier_rows()
    q = quantise(x, dtype)
    y = dequantise(q.codes, q.scales, dtype)
    assert torch.isfinite(y).all()  # nothing overflowed, not even near float32's max
    assert torch.equal(y[x == 0], x[x == 0])
    assert (y[x != 0] != 0).sum() > 0
    assert torch.equal(y[30], torch.zeros(x.shape[1]))
    grid = np.unique(decoded_by_bits(dtype)[np.isfinite(decoded_by_bits(dtype))])
    scaled = x.double().numpy() / q.scales.double().numpy()[:, None]
    nearest = np.abs(scaled[..., None] - grid).min(axis=-1)
    got = np.abs(scaled - q.codes.view(fmt.torch_dtype).double().numpy())
    # the nearest code, up to the float32 rounding of x / scale
    assert (got <= nearest + 2.0**-22 * np.abs(scaled) + 1e-300).all()
    # the row's largest value maps onto the format's largest (its whole range is used)
    big = q.codes.view(fmt.torch_dtype).float().abs().amax(dim=1)
    assert torch.equal(big[x.abs().amax(dim=1) > 0], torch.full((39,), fmt.max))
    # per value: half a relative step of a normal value, or half a subnormal step (of this
    # row's scale), plus float32 rounding of the scale and the product
    x64, y64, s64 = x.double(), y.double(), q.scales.double()[:, None]
    bound = (2.0 ** -(fmt.mantissa_bits + 1) * x64.abs() + fmt.subnormal_step / 2 * s64
             + 2.0**-21 * x64.abs())
    assert ((x64 - y64).abs() <= bound).all()
    assert q.sq_error == pytest.approx(float(((x64 - y64) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_rows_are_refused_in_one_line_and_nothing_is_written(
        tmp_path: Path, bad: float) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec("float8_e4m3"), make_layout())
    fill_store(store, shards=[0])
    x = {h: torch.ones(32, d) for h, d in store.layout.d_model.items()}
    x[HOOKS[1]][4, 2] = bad
    with pytest.raises(FormatError, match=r"1 rows hold inf or NaN") as e:
        write_shard(store, 1, x, RowIndex(*(np.zeros(32),) * 3), writer_id="w")
    assert "\n" not in str(e.value)
    assert store.shards_done() == [0]
    assert not store.location.exists(f"activations/{HOOKS[0]}/c/1/0")


def test_an_8bit_store_verifies_and_reads_on_every_backend(store_url: str) -> None:
    store = ActivationStore.create(store_url, make_spec("float8_e4m3"), make_layout())
    want = fill_store(store)
    assert verify(store).ok
    got = store.read_torch(HOOKS[0], 0, store.num_rows)
    q = quantise(want.activations[HOOKS[0]], "float8_e4m3")
    assert torch.equal(got, dequantise(q.codes, q.scales, "float8_e4m3"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_store_reads_bit_exactly_with_plain_zarr(tmp_path: Path,
                                                   dtype: StorageDtype) -> None:
    # with the codec a generated store of this dtype gets (e4m3: lz4hc, bit-shuffled)
    layout = replace(make_layout(), codec=default_codec(dtype))
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(dtype), layout)
    want = fill_store(store)
    assert store.spec.key != make_spec("bfloat16").key  # never the bf16 store's key
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    for hook in HOOKS:
        codes = g[f"activations/{hook}"]
        assert codes.dtype == np.uint8
        assert codes.attrs["actstore.dtype"] == dtype
        scales = g[codes.attrs["actstore.scales"]][:]
        plain = decoded_by_bits(dtype).astype(np.float32)[codes[:]] * scales[:, None]
        np.testing.assert_array_equal(plain, store.read_float32(hook, 0, store.num_rows))
        assert torch.equal(torch.from_numpy(plain[5:90]), store.read_torch(hook, 5, 90))
        # and what was written: the writer's rows, quantised
        q = quantise(want.activations[hook], dtype)
        np.testing.assert_array_equal(codes[:], q.codes.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_noise_floor_is_the_error_of_the_stored_rows(tmp_path: Path, dtype: str) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec(dtype), make_layout())
    want = fill_store(store)
    info = describe(store)
    for hook in HOOKS:
        exact = want.activations[hook].double()
        stored = torch.from_numpy(store.read_float32(hook, 0, store.num_rows)).double()
        err = float(((exact - stored) ** 2).sum(dim=1).mean())
        var = float(((exact - exact.mean(dim=0)) ** 2).sum(dim=1).mean())
        stats = store.stats(hook)
        assert stats.mean_sq_error == pytest.approx(err, rel=1e-9)
        assert stats.variance == pytest.approx(var, rel=1e-9)  # of the exact rows
        assert info["hooks"][hook]["noise_floor_fvu"] == pytest.approx(err / var, rel=1e-9)
        assert 0 < err / var < (0.01 if dtype == "float8_e4m3" else 0.03)
    json.dumps(info)  # `actstore info --json` prints it


def test_lossless_stores_keep_their_markers(tmp_path: Path) -> None:
    store = ActivationStore.create(str(tmp_path / "s"), make_spec("bfloat16"), make_layout())
    fill_store(store)
    assert "mean_sq_error" not in store.commit_record(0)["stats"][HOOKS[0]]
    assert store.stats(HOOKS[0]).noise_floor is None
    assert "noise_floor_fvu" not in describe(store)["hooks"][HOOKS[0]]
    assert not store.location.exists(f"scales/{HOOKS[0]}/zarr.json")


def written_codes(dtype: str) -> torch.Tensor:
    """Every code a writer may store: all but NaN (e4m3) and the all-ones exponent (e5m2),
    which FORMAT.md says are never written."""
    finite = np.flatnonzero(np.isfinite(decoded_by_bits(dtype)))
    return torch.from_numpy(finite.astype(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [256, 255])  # an even and an odd width
def test_the_cpu_decoding_gives_torchs_float8_values(dtype: str, width: int) -> None:
    g = torch.Generator().manual_seed(1)
    valid = written_codes(dtype)
    codes = valid[torch.randint(0, len(valid), (9, width), generator=g)]
    codes[0] = valid.repeat(2)[:width]  # every code, subnormal ones included
    # scales from a subnormal float32 to a row's near float32's largest: the last rows' are too
    # large to fold 2**k into, and take the other path
    scales = torch.rand(9, generator=g) * 10.0 ** torch.tensor(
        [-3, 0, 2, 4, -40, -30, 9, 30, 33], dtype=torch.float64)
    scales = scales.float()
    want = codes.view(FLOAT8_DTYPES[dtype].torch_dtype).float() * scales[:, None]
    got = dequantise(codes, scales, dtype)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # the bits, signs of 0 too


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cpu_decoding_is_exact_with_subnormals_flushed(dtype: str) -> None:
    codes = written_codes(dtype)[None, :].repeat(2, 1)
    scales = torch.tensor([1.0, 3.7], dtype=torch.float32)
    want = codes.view(FLOAT8_DTYPES[dtype].torch_dtype).float() * scales[:, None]
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        got = dequantise(codes, scales, dtype)
    finally:
        torch.set_flush_denormal(False)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cpu_quantiser_matches_the_device_one(dtype: str) -> None:
    """numpy on a CPU, torch elsewhere: the same codes, scales and error, outliers included
    (the device path is run here on the CPU, as it runs on a GPU)."""
    from actstore.store.quant import float8

    g = torch.Generator().manual_seed(2)
    tiny = torch.randn(3, 64, generator=g) * torch.tensor([[1e-44], [1e-40], [1e-37]])
    tiny[0, :3] = torch.tensor([1e-44, -3e-45, 0.0])  # scales that underflow to 0 or are
    x = torch.cat([outlier_rows(), tiny, torch.randn(3000, 64, generator=g)])  # subnormal
    fmt = FLOAT8_DTYPES[dtype]
    codes, scales = torch.empty(x.shape, dtype=torch.uint8), torch.empty(len(x))
    err = float(float8._quantise_block(x, fmt, codes, scales))
    got = quantise(x, dtype)
    assert torch.equal(got.codes, codes)
    assert torch.equal(got.scales, scales)
    assert got.sq_error == pytest.approx(err, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cpu_quantiser_counts_every_non_finite_row(dtype: str) -> None:
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(3))
    x[3, 1], x[7, 0], x[7, 5], x[40, 15] = float("nan"), float("inf"), float("nan"), -float("inf")
    with pytest.raises(NonFiniteRowsError, match=r"^3 rows hold inf or NaN"):
        quantise(x, dtype)
    with pytest.raises(NonFiniteRowsError, match=r"^3 rows hold inf or NaN"):
        quantise(x.T.contiguous().T, dtype)  # a non-contiguous view of the same rows


def test_codes_and_scales_of_different_rows_are_refused() -> None:
    # the compiled pass checks no bounds: a short scales array must fail before it runs
    codes = torch.zeros((6, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="6 rows of codes need 6 scales"):
        dequantise(codes, torch.ones(2), "float8_e4m3")
    with pytest.raises(ValueError, match=r"must be \(rows, d_model\)"):
        dequantise(codes.reshape(-1), torch.ones(24), "float8_e4m3")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_cpu_quantiser_rounds_every_tie_and_neighbour_as_torch(dtype: str) -> None:
    """Scale 1 (each row holds the format's largest value), so the codes are x's own
    rounding: every code's value, every midpoint between neighbouring codes (ties go to the
    even code) and the float32 values on either side of each, both signs, against torch's
    float32 -> float8 conversion."""
    fmt = FLOAT8_DTYPES[dtype]
    grid = np.unique(np.abs(code_values(dtype)[np.isfinite(code_values(dtype))]))
    mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)  # exact
    near = [np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0)),
            np.nextafter(grid, np.float32(np.inf))[:-1], np.nextafter(grid, np.float32(0))]
    tiny = np.array([1e-45, 1e-40, 1.2e-38, fmt.subnormal_step / 4], np.float32)
    values = np.concatenate([grid, mids, *near, tiny])
    values = np.concatenate([values, -values])
    width = 63
    body = np.zeros(-(-len(values) // width) * width, np.float32)
    body[:len(values)] = values
    body = body.reshape(-1, width)
    x = torch.from_numpy(np.hstack([np.full((len(body), 1), fmt.max, np.float32), body]))
    q = quantise(x, dtype)
    assert torch.equal(q.scales, torch.ones(len(x)))
    assert torch.equal(q.codes, x.to(fmt.torch_dtype).view(torch.uint8))
    y = q.codes.view(fmt.torch_dtype).double()
    assert q.sq_error == pytest.approx(float(((x.double() - y) ** 2).sum()), rel=1e-12)
