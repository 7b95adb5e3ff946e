"""Numba versions of `quant.activations`: round activation rows as llama.cpp's CPU kernels do.

One pass over x per product (a few microseconds for a decode vector), tested against the NumPy
reference in tests/test_activations.py.

For Q4_1/Q5_1 weights (`WITH_OFFSETS`) x goes to the kernels *with block sums*: each row is its n
rounded values followed by n / 32 sums, llama.cpp's f16 Q8_1 sums in "llama.cpp" mode and the exact
float32 sums in "f32" mode; the kernels multiply the weights' block offsets m by them
(quant/activations.py explains why).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from quant import QK_K
from quant.activations import BF16, F16, NONE, Q8_K, WITH_OFFSETS, round_bf16, vec_dot_type

from .int_intrinsics import HOST_F16C, f16_round

_JIT = dict(nogil=True, cache=True, fastmath=False)


@numba.njit(inline="always", **_JIT)
def to_f16(v):
    """float32 -> nearest f16 (ties to even; beyond 65504 + half a step: inf) -> float32: the F16C
    conversions where the host has them (f16_round), the same rounding by hand elsewhere."""
    if HOST_F16C:  # a global: folded at compile time
        return f16_round(v)
    if v == 0.0 or not math.isfinite(v):
        return np.float32(v)
    a = abs(np.float64(v))
    m, e = math.frexp(a)                      # a = m * 2**e, 0.5 <= m < 1
    if e >= -13:                              # normal f16: 11 significant bits
        r = math.ldexp(np.rint(math.ldexp(m, 11)), e - 11)
        if r > 65504.0:
            r = np.inf
    else:
        r = np.rint(a * 16777216.0) / 16777216.0  # subnormal: steps of 2**-24
    return np.float32(r if v > 0 else -r)


@numba.njit(inline="always")
def _absmax(x2, r, a, b):
    """max |x2[r, a:b]| (Q8_0/Q8_1's amax)."""
    amax = np.float32(0.0)
    for j in range(a, b):
        v = abs(x2[r, j])
        if v > amax:
            amax = v
    return amax


@numba.njit(inline="always")
def _signed_absmax(x2, r, a, b):
    """(max |x2[r, a:b]|, the first value reaching it, with its sign): Q8_K's amax and max."""
    amax = np.float32(0.0)
    smax = np.float32(0.0)
    for j in range(a, b):
        v = abs(x2[r, j])
        if v > amax:
            amax = v
            smax = x2[r, j]
    return amax, smax


@numba.njit(**_JIT)
def _round_q8_0(x2, out):
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, 32):
            amax = _absmax(x2, r, b, b + 32)
            d = to_f16(np.float32(amax / np.float32(127.0)))
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            for j in range(b, b + 32):
                out[r, j] = d * np.float32(np.rint(x2[r, j] * inv))


@numba.njit(**_JIT)
def _round_q8_1(x2, out):
    """_round_q8_0's values into out[:, :n], llama.cpp's block sums f16(d32 * sum(q)) after them."""
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, 32):
            amax = _absmax(x2, r, b, b + 32)
            d32 = np.float32(amax / np.float32(127.0))
            d = to_f16(d32)
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            q_sum = np.float32(0.0)               # exact: integers up to 32 * 127
            for j in range(b, b + 32):
                q = np.float32(np.rint(x2[r, j] * inv))
                out[r, j] = d * q
                q_sum += q
            out[r, n + b // 32] = to_f16(np.float32(d32 * q_sum))


@numba.njit(**_JIT)
def _append_sums(x2, out):
    """x into out[:, :n], the exact float32 sum of each block of 32 after it."""
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, 32):
            s = np.float32(0.0)
            for j in range(b, b + 32):
                out[r, j] = x2[r, j]
                s += x2[r, j]
            out[r, n + b // 32] = s


@numba.njit(**_JIT)
def _round_q8_k(x2, out):
    n_rows, n = x2.shape
    for r in range(n_rows):
        for b in range(0, n, QK_K):
            amax, smax = _signed_absmax(x2, r, b, b + QK_K)
            if amax == 0:
                for j in range(b, b + QK_K):
                    out[r, j] = 0.0
                continue
            iscale = np.float32(-127.0) / smax
            d = np.float32(1.0) / iscale
            for j in range(b, b + QK_K):
                out[r, j] = d * np.float32(min(np.rint(iscale * x2[r, j]), 127.0))


@numba.njit(**_JIT)
def pack_q8_32_into(x2, out):
    """_round_q8_1's rounding kept as integers, into out (n_rows, n + n / 4) uint8 (pack_q8_32's layout):
    each row's n int8 codes, its n / 32 f16-rounded scales d and its Q8_1 block sums f16(d32 * sum(q))."""
    n_rows, n = x2.shape
    nb = n // 32
    for r in range(n_rows):
        codes = out[r, :n].view(np.int8)
        scales = out[r, n:].view(np.float32)
        for b in range(nb):
            amax = _absmax(x2, r, 32 * b, 32 * b + 32)
            d32 = np.float32(amax / np.float32(127.0))
            inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
            q_sum = np.float32(0.0)
            for j in range(32 * b, 32 * b + 32):
                q = np.float32(np.rint(x2[r, j] * inv))
                codes[j] = np.int8(q)
                q_sum += q
            scales[b] = to_f16(d32)
            scales[nb + b] = to_f16(np.float32(d32 * q_sum))


def pack_q8_32(x: np.ndarray) -> np.ndarray:
    """x (n_rows, n) -> uint8 (n_rows, n + n / 4): each row rounded to int8 blocks of 32 exactly as
    `with_block_sums(x, rounded=True)` rounds it, kept as integers for the integer kernels
    (rows_int.py): n codes, then n / 32 float32 scales, then n / 32 float32 Q8_1 block sums.
    (The product drivers pack inside their compiled code, products.pack_rows; this is the same.)"""
    x2 = np.ascontiguousarray(x, np.float32)
    n_rows, n = x2.shape
    if n % 32:
        raise ValueError(f"activation rows of {n} values do not split into blocks of 32")
    out = np.empty((n_rows, q8_32_width(n)), np.uint8)
    pack_q8_32_into(x2, out)
    return out


@numba.njit(inline="always")
def q8_32_width(n):
    return n + n // 4


@numba.njit(inline="always")
def q8_k_width(n):
    return n + n // 64 + n // 4


@numba.njit(**_JIT)
def pack_q8_k_into(x2, out):
    """_round_q8_k's rounding kept as integers, into out (n_rows, n + n / 64 + n / 4) uint8 (pack_q8_k's
    layout): codes, d per 256 and the sums of 16 codes."""
    n_rows, n = x2.shape
    nbk = n // QK_K
    for r in range(n_rows):
        codes = out[r, :n].view(np.int8)
        scales = out[r, n:n + 4 * nbk].view(np.float32)
        bsums = out[r, n + 4 * nbk:].view(np.float32)
        for b in range(nbk):
            o = QK_K * b
            amax, smax = _signed_absmax(x2, r, o, o + QK_K)
            if amax == 0:
                scales[b] = 0.0
                for j in range(o, o + QK_K):
                    codes[j] = 0
                for g in range(16):
                    bsums[16 * b + g] = 0.0
                continue
            iscale = np.float32(-127.0) / smax
            scales[b] = np.float32(1.0) / iscale
            for g in range(16):
                s = 0
                for j in range(o + 16 * g, o + 16 * g + 16):
                    q = np.int32(min(np.rint(iscale * x2[r, j]), 127.0))
                    codes[j] = np.int8(q)
                    s += q
                bsums[16 * b + g] = np.float32(s)


def pack_q8_k(x: np.ndarray) -> np.ndarray:
    """x (n_rows, n) -> uint8 (n_rows, n + n / 64 + n / 4): rows rounded to Q8_K exactly as
    `round_like_llama_cpp` rounds them for the K-quants, kept as integers (rows_int.py): n codes, n / 256
    float32 scales d, n / 16 float32 sums of 16 codes (llama.cpp's bsums)."""
    x2 = np.ascontiguousarray(x, np.float32)
    n_rows, n = x2.shape
    if n % QK_K:
        raise ValueError(f"activation rows of {n} values do not split into blocks of {QK_K}")
    out = np.empty((n_rows, q8_k_width(n)), np.uint8)
    pack_q8_k_into(x2, out)
    return out


@numba.njit(**_JIT)
def _f16_rounded(x, out):
    for i in range(x.shape[0]):
        out[i] = to_f16(x[i])


def f16_rounded(x) -> np.ndarray:
    """x rounded to f16 and back, as float32 (NumPy's astype pair, ~4 ns a value, done by F16C)."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty_like(x)
    _f16_rounded(x.reshape(-1), out.reshape(-1))
    return out


def round_like_llama_cpp(x: np.ndarray, weight_type) -> np.ndarray:
    """Same contract as `quant.activations.round_like_llama_cpp`; returns a new float32 array."""
    kind = vec_dot_type(weight_type)
    if kind == NONE:
        return x
    x = np.ascontiguousarray(x, np.float32)
    if kind == F16:
        return f16_rounded(x)
    if kind == BF16:
        return round_bf16(x)
    block = QK_K if kind == Q8_K else 32
    if x.shape[-1] % block:
        raise ValueError(f"activation rows of {x.shape[-1]} values do not split into blocks of {block}")
    x2 = x.reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    (_round_q8_k if kind == Q8_K else _round_q8_0)(x2, out)
    return out.reshape(x.shape)



def with_block_sums(x: np.ndarray, rounded: bool) -> np.ndarray:
    """x (..., n) -> (..., n + n / 32): the values (rounded to Q8_1 if `rounded`) then the block sums
    the Q4_1/Q5_1 kernels take (llama.cpp's f16 Q8_1 sums if `rounded`, else exact)."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[-1]
    if n % 32:
        raise ValueError(f"activation rows of {n} values do not split into blocks of 32")
    x2 = x.reshape(-1, n)
    out = np.empty((x2.shape[0], n + n // 32), np.float32)
    (_round_q8_1 if rounded else _append_sums)(x2, out)
    return out.reshape(*x.shape[:-1], n + n // 32)


def for_weight(x: np.ndarray, weight_type, activations: str) -> np.ndarray:
    """x as the product kernels of `weight_type` take it in this activations mode ("llama.cpp" or "f32")."""
    if weight_type in WITH_OFFSETS:
        return with_block_sums(x, activations == "llama.cpp")
    return round_like_llama_cpp(x, weight_type) if activations == "llama.cpp" else x
