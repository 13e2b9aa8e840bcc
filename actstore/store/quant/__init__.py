"""8-bit float storage: each row quantised with its own scale, and the error that costs.

 exact rows (n, d) ──quantise──▶ codes (n, d) uint8 (float8 bit patterns)
                                 scales (n,) float32 (the row's absmax / the format's max)
                                 sq_error: Σ‖x − q(x)‖² over the rows (float64)
 codes, scales ──dequantise (on the device the batch goes to)──▶ float32 rows

float8.py: the format and its arithmetic; kernels.py: the compiled CPU passes (numba) that
turn stored bits (8-bit codes, and bf16 too) into float32 rows, normalised, in one pass.

Public names: `FLOAT8_DTYPES`, `Float8Format`, `Quantised`, `is_float8`, `float8_format`,
`quantise`, `dequantise`, `dequantise_numpy`, `code_values`.
"""

from actstore.store.quant.float8 import (
    FLOAT8_DTYPES,
    Float8Format,
    Quantised,
    code_values,
    dequantise,
    dequantise_numpy,
    float8_format,
    is_float8,
    quantise,
)

__all__ = ["FLOAT8_DTYPES", "Float8Format", "Quantised", "code_values", "dequantise",
           "dequantise_numpy", "float8_format", "is_float8", "quantise"]
