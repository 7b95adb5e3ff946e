"""Numba versions of `quant.activations`: round activation rows as llama.cpp's CPU kernels do.

One pass over x per product (a few microseconds for a decode vector), tested against the NumPy
reference in tests/test_activations.py.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from quant import QK_K
from quant.activations import BF16, F16, NONE, Q8_K, round_bf16, vec_dot_type

_JIT = dict(nogil=True, cache=True, fastmath=False)


@numba.njit(inline="always", **_JIT)
def to_f16(v):
    """float32 -> nearest f16 (ties to even) -> float32, for v >= 0 (block scales, probabilities)."""
    if v == 0.0 or not math.isfinite(v):
        return np.float32(v)
    if v > 65504.0:
        return np.float32(np.inf)
    m, e = math.frexp(np.float64(v))          # v = m * 2**e, 0.5 <= m < 1
    if e >= -13:                              # normal f16: 11 significant bits
        return np.float32(math.ldexp(np.rint(math.ldexp(m, 11)), e - 11))
    return np.float32(np.rint(np.float64(v) * 16777216.0) / 16777216.0)  # subnormal: steps of 2**-24


@numba.njit(**_JIT)
def _round_q8_0(x2, out):
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, 32):
            amax = np.float32(0.0)
            for j in range(b, b + 32):
                a = abs(x2[r, j])
                if a > amax:
                    amax = a
            d = to_f16(np.float32(amax / np.float32(127.0)))
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            for j in range(b, b + 32):
                out[r, j] = d * np.float32(np.rint(x2[r, j] * inv))


@numba.njit(**_JIT)
def _round_q8_k(x2, out):
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, QK_K):
            amax = np.float32(0.0)
            smax = np.float32(0.0)
            for j in range(b, b + QK_K):
                a = abs(x2[r, j])
                if a > amax:
                    amax = a
                    smax = x2[r, j]
            if amax == 0:
                for j in range(b, b + QK_K):
                    out[r, j] = 0.0
                continue
            iscale = np.float32(-127.0) / smax
            d = np.float32(1.0) / iscale
            for j in range(b, b + QK_K):
                out[r, j] = d * np.float32(min(np.rint(iscale * x2[r, j]), 127.0))


def round_like_llama_cpp(x: np.ndarray, weight_type) -> np.ndarray:
    """Same contract as `quant.activations.round_like_llama_cpp`; returns a new float32 array."""
    kind = vec_dot_type(weight_type)
    if kind == NONE:
        return x
    x = np.ascontiguousarray(x, np.float32)
    if kind == F16:
        return x.astype(np.float16).astype(np.float32)
    if kind == BF16:
        return round_bf16(x)
    block = QK_K if kind == Q8_K else 32
    if x.shape[-1] % block:
        raise ValueError(f"activation rows of {x.shape[-1]} values do not split into blocks of {block}")
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    (_round_q8_k if kind == Q8_K else _round_q8_0)(x2, out)
    return out.reshape(x.shape)

