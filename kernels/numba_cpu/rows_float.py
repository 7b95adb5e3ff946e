"""Row kernels for the plain float storage types: F32 (float32 storage), F16 and BF16 (uint16).

`dot_<type>(w, x) -> float32` and `dequant_row_<type>(w, out)` as in rows_legacy; rows may have any
length (no block structure). `tile_dot44` multiplies dequantized rows with tokens in the batched
driver.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from .rows_common import JIT_DEQ, JIT_DOT, JIT_SUM, bf16_bits_to_f32, f16_bits_to_f32, stack_f32
from .rows_legacy import hsum32, zero32


@njit(**JIT_DOT)
def fdot(a, x):
    """sum(a * x) for float32 vectors of the same length."""
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    n = x.shape[0]
    n32 = n - n % 32
    for c in range(0, n32, 32):
        ac = a[c:c + 32]
        xc = x[c:c + 32]
        for j in range(16):
            acc[j] += ac[j] * xc[j]
        for j in range(16):
            acc[16 + j] += ac[16 + j] * xc[16 + j]
    for i in range(n32, n):
        acc[0] += a[i] * x[i]
    return hsum32(acc)


@njit(**JIT_DOT)
def fdot4(a, x0, x1, x2, x3):
    """(fdot(a, x0), fdot(a, x1), fdot(a, x2), fdot(a, x3)), each bit for bit fdot's (the same lanes,
    in the same order), computed together: four independent accumulator chains keep the FMA units
    busy where one chain waits on its own latency (and the four `hsum32` chains overlap too)."""
    acc0 = carray(stack_f32(32), 32)
    acc1 = carray(stack_f32(32), 32)
    acc2 = carray(stack_f32(32), 32)
    acc3 = carray(stack_f32(32), 32)
    zero32(acc0)
    zero32(acc1)
    zero32(acc2)
    zero32(acc3)
    n = x0.shape[0]
    n32 = n - n % 32
    for c in range(0, n32, 32):
        ac = a[c:c + 32]
        y0 = x0[c:c + 32]
        y1 = x1[c:c + 32]
        y2 = x2[c:c + 32]
        y3 = x3[c:c + 32]
        for j in range(32):
            acc0[j] += ac[j] * y0[j]
        for j in range(32):
            acc1[j] += ac[j] * y1[j]
        for j in range(32):
            acc2[j] += ac[j] * y2[j]
        for j in range(32):
            acc3[j] += ac[j] * y3[j]
    for i in range(n32, n):
        acc0[0] += a[i] * x0[i]
        acc1[0] += a[i] * x1[i]
        acc2[0] += a[i] * x2[i]
        acc3[0] += a[i] * x3[i]
    return hsum32(acc0), hsum32(acc1), hsum32(acc2), hsum32(acc3)


# Products of a dequantized tile with tokens (the batched path): a plain loop that the *loop*
# vectorizer handles (16 lanes per partial sum), which needs 'reassoc': compiled on its own (not
# inlined, so the flag is its own), taking 2-D arrays plus row indices so that the caller creates
# no array views (each view costs atomic reference-count updates).


@njit(**JIT_SUM)
def tile_dot44(a2, r0, x2, i0, i1, i2, i3):
    """The 4x4 block a2[r0:r0+4] . x2[(i0, i1, i2, i3)] as a 16-tuple, row-major (row r0+k, token
    j at 4k + j). Register blocking: 8 vector loads feed 16 multiply-adds (~75-100 GFLOP/s on
    one AVX-512 core, about single-threaded BLAS)."""
    s00 = np.float32(0.0)
    s01 = np.float32(0.0)
    s02 = np.float32(0.0)
    s03 = np.float32(0.0)
    s10 = np.float32(0.0)
    s11 = np.float32(0.0)
    s12 = np.float32(0.0)
    s13 = np.float32(0.0)
    s20 = np.float32(0.0)
    s21 = np.float32(0.0)
    s22 = np.float32(0.0)
    s23 = np.float32(0.0)
    s30 = np.float32(0.0)
    s31 = np.float32(0.0)
    s32 = np.float32(0.0)
    s33 = np.float32(0.0)
    for i in range(a2.shape[1]):
        a0 = a2[r0, i]
        a1 = a2[r0 + 1, i]
        a2_ = a2[r0 + 2, i]
        a3 = a2[r0 + 3, i]
        b0 = x2[i0, i]
        b1 = x2[i1, i]
        b2 = x2[i2, i]
        b3 = x2[i3, i]
        s00 += a0 * b0
        s01 += a0 * b1
        s02 += a0 * b2
        s03 += a0 * b3
        s10 += a1 * b0
        s11 += a1 * b1
        s12 += a1 * b2
        s13 += a1 * b3
        s20 += a2_ * b0
        s21 += a2_ * b1
        s22 += a2_ * b2
        s23 += a2_ * b3
        s30 += a3 * b0
        s31 += a3 * b1
        s32 += a3 * b2
        s33 += a3 * b3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


# ---------------------------------------------------------------- F32


@njit(**JIT_DOT)
def dot_f32(w, x):
    return fdot(w, x)


@njit(**JIT_DEQ)
def dequant_row_f32(w, out):
    for i in range(out.shape[0]):
        out[i] = w[i]


# ---------------------------------------------------------------- F16 (uint16 bits)


@njit(**JIT_DOT)
def dot_f16(w, x):
    acc = carray(stack_f32(32), 32)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    n = x.shape[0]
    n32 = n - n % 32
    for c in range(0, n32, 32):
        wc = w[c:c + 32]
        xc = x[c:c + 32]
        for j in range(32):
            v[j] = f16_bits_to_f32(wc[j])
        for j in range(16):
            acc[j] += v[j] * xc[j]
        for j in range(16):
            acc[16 + j] += v[16 + j] * xc[16 + j]
    for i in range(n32, n):
        acc[0] += f16_bits_to_f32(w[i]) * x[i]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_f16(w, out):
    for i in range(out.shape[0]):
        out[i] = f16_bits_to_f32(w[i])


# ---------------------------------------------------------------- BF16 (uint16 bits: the top half of a float32)


@njit(**JIT_DOT)
def dot_bf16(w, x):
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    n = x.shape[0]
    n32 = n - n % 32
    for c in range(0, n32, 32):
        wc = w[c:c + 32]
        xc = x[c:c + 32]
        for j in range(16):
            acc[j] += bf16_bits_to_f32(wc[j]) * xc[j]
        for j in range(16):
            acc[16 + j] += bf16_bits_to_f32(wc[16 + j]) * xc[16 + j]
    for i in range(n32, n):
        acc[0] += bf16_bits_to_f32(w[i]) * x[i]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_bf16(w, out):
    for i in range(out.shape[0]):
        out[i] = bf16_bits_to_f32(w[i])
