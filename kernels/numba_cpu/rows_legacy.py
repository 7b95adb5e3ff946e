"""Row kernels for the 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4.

`dot_<type>(w, x) -> float32`: one row's storage `w` (uint8, row_bytes) times `x` (float32, n_in).
`dequant_row_<type>(w, out)`: the row as float32 into `out` (n_in,), bit-exact with quant/.

Layouts (shared/reference/formats.md §2.3): byte qs[j] holds element j (low nibble) and j+16 (high
nibble). Written in the style explained in rows_common: 16-lane loops, stack accumulator with one
independent chain per half block (`acc[0:16]` low nibbles, `acc[16:32]` high nibbles).

Q4_1/Q5_1 (`y = d * q + m`) take x with its block sums appended (numba_cpu/activations.for_weight)
and multiply m by them, as llama.cpp multiplies m by Q8_1's f16 block sums; `tile_row_q4_1/q5_1`
lay a row out the same way for the batched path.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from .rows_common import E8M0_HALF, HBIT16, JIT_DEQ, JIT_DOT, KVALUES_IQ4NL, KVALUES_MXFP4, f16_at, lut16, stack_f32


@njit(inline="always")
def zero32(acc):
    for j in range(32):
        acc[j] = np.float32(0.0)


@njit(inline="always")
def hsum32(acc):
    """Sum of the 32 lanes, sequentially. (A tree written back into `acc`, or through other stack
    arrays, or interleaved partial sums all kept LLVM from promoting `acc` to registers: 3-6x
    slower kernels. The chain costs ~15 ns per row, partly overlapped with the next row.)"""
    s = np.float32(0.0)
    for j in range(32):
        s += acc[j]
    return s


@njit(inline="always")
def store32(v, ob):
    """ob[0:32] = v[0:32]. The dequantizers decode a block into a stack array first: stores
    straight to `out` could alias the weight bytes as far as LLVM knows, which blocks vectorization."""
    for j in range(32):
        ob[j] = v[j]


@njit(inline="always")
def u32_at(w, o):
    return np.uint32(w[o]) | (np.uint32(w[o + 1]) << 8) | (np.uint32(w[o + 2]) << 16) | (np.uint32(w[o + 3]) << 24)


# ---------------------------------------------------------------- Q4_0: d:f16, qs[16]


@njit(**JIT_DOT)
def dot_q4_0(w, x):
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 32):
        blk = w[18 * b:18 * b + 18]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            acc[j] += np.float32(np.int32(blk[2 + j] & 15) - 8) * d * xb[j]
        for j in range(16):
            acc[16 + j] += np.float32(np.int32(blk[2 + j] >> 4) - 8) * d * xb[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q4_0(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[18 * b:18 * b + 18]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            v[j] = d * np.float32(np.int32(blk[2 + j] & 15) - 8)
        for j in range(16):
            v[16 + j] = d * np.float32(np.int32(blk[2 + j] >> 4) - 8)
        store32(v, ob)


# ---------------------------------------------------------------- Q4_1: d:f16, m:f16, qs[16]


@njit(**JIT_DOT)
def dot_q4_1(w, x):
    """x: n_in values then n_in / 32 block sums (activations.for_weight); the offsets m multiply the
    sums, as in llama.cpp's vec_dot_q4_1_q8_1."""
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    nb = w.shape[0] // 20
    xs = x[32 * nb:33 * nb]
    sm = np.float32(0.0)
    for b in range(nb):
        blk = w[20 * b:20 * b + 20]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            acc[j] += d * np.float32(blk[4 + j] & 15) * xb[j]
        for j in range(16):
            acc[16 + j] += d * np.float32(blk[4 + j] >> 4) * xb[16 + j]
        sm += f16_at(blk, 2) * xs[b]
    return hsum32(acc) + sm


@njit(**JIT_DEQ)
def dequant_row_q4_1(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[20 * b:20 * b + 20]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        m = f16_at(blk, 2)
        for j in range(16):
            v[j] = d * np.float32(blk[4 + j] & 15) + m
        for j in range(16):
            v[16 + j] = d * np.float32(blk[4 + j] >> 4) + m
        store32(v, ob)


# ---------------------------------------------------------------- Q5_0: d:f16, qh[4], qs[16]
# 5-bit q = nibble | (bit j of the little-endian u32 qh) << 4 (element j, j+16 for the high nibble);
# HBIT16 gives 16.0/0.0 for 8 bits of one qh byte at a time.


@njit(**JIT_DOT)
def dot_q5_0(w, x):
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 32):
        blk = w[22 * b:22 * b + 22]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        h0 = HBIT16[8 * np.int64(blk[2]):8 * np.int64(blk[2]) + 8]
        h1 = HBIT16[8 * np.int64(blk[3]):8 * np.int64(blk[3]) + 8]
        h2 = HBIT16[8 * np.int64(blk[4]):8 * np.int64(blk[4]) + 8]
        h3 = HBIT16[8 * np.int64(blk[5]):8 * np.int64(blk[5]) + 8]
        for j in range(8):
            acc[j] += (np.float32(blk[6 + j] & 15) + h0[j] - np.float32(16)) * d * xb[j]
        for j in range(8):
            acc[8 + j] += (np.float32(blk[14 + j] & 15) + h1[j] - np.float32(16)) * d * xb[8 + j]
        for j in range(8):
            acc[16 + j] += (np.float32(blk[6 + j] >> 4) + h2[j] - np.float32(16)) * d * xb[16 + j]
        for j in range(8):
            acc[24 + j] += (np.float32(blk[14 + j] >> 4) + h3[j] - np.float32(16)) * d * xb[24 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q5_0(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[22 * b:22 * b + 22]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        h0 = HBIT16[8 * np.int64(blk[2]):8 * np.int64(blk[2]) + 8]
        h1 = HBIT16[8 * np.int64(blk[3]):8 * np.int64(blk[3]) + 8]
        h2 = HBIT16[8 * np.int64(blk[4]):8 * np.int64(blk[4]) + 8]
        h3 = HBIT16[8 * np.int64(blk[5]):8 * np.int64(blk[5]) + 8]
        for j in range(8):
            v[j] = d * (np.float32(blk[6 + j] & 15) + h0[j] - np.float32(16))
        for j in range(8):
            v[8 + j] = d * (np.float32(blk[14 + j] & 15) + h1[j] - np.float32(16))
        for j in range(8):
            v[16 + j] = d * (np.float32(blk[6 + j] >> 4) + h2[j] - np.float32(16))
        for j in range(8):
            v[24 + j] = d * (np.float32(blk[14 + j] >> 4) + h3[j] - np.float32(16))
        store32(v, ob)


# ---------------------------------------------------------------- Q5_1: d:f16, m:f16, qh[4], qs[16]


@njit(**JIT_DOT)
def dot_q5_1(w, x):
    """x with block sums, as dot_q4_1."""
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    nb = w.shape[0] // 24
    xs = x[32 * nb:33 * nb]
    sm = np.float32(0.0)
    for b in range(nb):
        blk = w[24 * b:24 * b + 24]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        h0 = HBIT16[8 * np.int64(blk[4]):8 * np.int64(blk[4]) + 8]
        h1 = HBIT16[8 * np.int64(blk[5]):8 * np.int64(blk[5]) + 8]
        h2 = HBIT16[8 * np.int64(blk[6]):8 * np.int64(blk[6]) + 8]
        h3 = HBIT16[8 * np.int64(blk[7]):8 * np.int64(blk[7]) + 8]
        for j in range(8):
            acc[j] += d * (np.float32(blk[8 + j] & 15) + h0[j]) * xb[j]
        for j in range(8):
            acc[8 + j] += d * (np.float32(blk[16 + j] & 15) + h1[j]) * xb[8 + j]
        for j in range(8):
            acc[16 + j] += d * (np.float32(blk[8 + j] >> 4) + h2[j]) * xb[16 + j]
        for j in range(8):
            acc[24 + j] += d * (np.float32(blk[16 + j] >> 4) + h3[j]) * xb[24 + j]
        sm += f16_at(blk, 2) * xs[b]
    return hsum32(acc) + sm


@njit(**JIT_DEQ)
def dequant_row_q5_1(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[24 * b:24 * b + 24]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        m = f16_at(blk, 2)
        h0 = HBIT16[8 * np.int64(blk[4]):8 * np.int64(blk[4]) + 8]
        h1 = HBIT16[8 * np.int64(blk[5]):8 * np.int64(blk[5]) + 8]
        h2 = HBIT16[8 * np.int64(blk[6]):8 * np.int64(blk[6]) + 8]
        h3 = HBIT16[8 * np.int64(blk[7]):8 * np.int64(blk[7]) + 8]
        for j in range(8):
            v[j] = d * (np.float32(blk[8 + j] & 15) + h0[j]) + m
        for j in range(8):
            v[8 + j] = d * (np.float32(blk[16 + j] & 15) + h1[j]) + m
        for j in range(8):
            v[16 + j] = d * (np.float32(blk[8 + j] >> 4) + h2[j]) + m
        for j in range(8):
            v[24 + j] = d * (np.float32(blk[16 + j] >> 4) + h3[j]) + m
        store32(v, ob)


# The batched path's rows of Q4_1/Q5_1 (products.TILE_ROWS): the scaled codes d * q, then the block
# offsets m, to be multiplied with x's values and block sums.


@njit(**JIT_DEQ)
def tile_row_q4_1(w, out):
    nb = w.shape[0] // 20
    v = carray(stack_f32(32), 32)
    for b in range(nb):
        blk = w[20 * b:20 * b + 20]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            v[j] = d * np.float32(blk[4 + j] & 15)
        for j in range(16):
            v[16 + j] = d * np.float32(blk[4 + j] >> 4)
        store32(v, ob)
    om = out[32 * nb:33 * nb]
    for b in range(nb):
        om[b] = f16_at(w, 20 * b + 2)


@njit(**JIT_DEQ)
def tile_row_q5_1(w, out):
    nb = w.shape[0] // 24
    v = carray(stack_f32(32), 32)
    for b in range(nb):
        blk = w[24 * b:24 * b + 24]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        h0 = HBIT16[8 * np.int64(blk[4]):8 * np.int64(blk[4]) + 8]
        h1 = HBIT16[8 * np.int64(blk[5]):8 * np.int64(blk[5]) + 8]
        h2 = HBIT16[8 * np.int64(blk[6]):8 * np.int64(blk[6]) + 8]
        h3 = HBIT16[8 * np.int64(blk[7]):8 * np.int64(blk[7]) + 8]
        for j in range(8):
            v[j] = d * (np.float32(blk[8 + j] & 15) + h0[j])
        for j in range(8):
            v[8 + j] = d * (np.float32(blk[16 + j] & 15) + h1[j])
        for j in range(8):
            v[16 + j] = d * (np.float32(blk[8 + j] >> 4) + h2[j])
        for j in range(8):
            v[24 + j] = d * (np.float32(blk[16 + j] >> 4) + h3[j])
        store32(v, ob)
    om = out[32 * nb:33 * nb]
    for b in range(nb):
        om[b] = f16_at(w, 24 * b + 2)


# ---------------------------------------------------------------- Q8_0: d:f16, qs[32] int8


@njit(**JIT_DOT)
def dot_q8_0(w, x):
    acc = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 32):
        blk = w[34 * b:34 * b + 34]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            acc[j] += np.float32(np.int8(blk[2 + j])) * d * xb[j]
        for j in range(16):
            acc[16 + j] += np.float32(np.int8(blk[18 + j])) * d * xb[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q8_0(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[34 * b:34 * b + 34]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        for j in range(16):
            v[j] = d * np.float32(np.int8(blk[2 + j]))
        for j in range(16):
            v[16 + j] = d * np.float32(np.int8(blk[18 + j]))
        store32(v, ob)


# ---------------------------------------------------------------- IQ4_NL: d:f16, qs[16] -> kvalues_iq4nl
# The 16-entry tables are applied with `lut16` (one vector permute per 16 nibbles).


@njit(**JIT_DOT)
def dot_iq4_nl(w, x):
    acc = carray(stack_f32(32), 32)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 32):
        blk = w[18 * b:18 * b + 18]
        xb = x[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        lut16(KVALUES_IQ4NL, blk, 2, 0, v, 0)
        lut16(KVALUES_IQ4NL, blk, 2, 4, v, 16)
        for j in range(16):
            acc[j] += v[j] * d * xb[j]
        for j in range(16):
            acc[16 + j] += v[16 + j] * d * xb[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_iq4_nl(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[18 * b:18 * b + 18]
        ob = out[32 * b:32 * b + 32]
        d = f16_at(blk, 0)
        lut16(KVALUES_IQ4NL, blk, 2, 0, v, 0)
        lut16(KVALUES_IQ4NL, blk, 2, 4, v, 16)
        for j in range(32):
            v[j] = d * v[j]
        store32(v, ob)


# ---------------------------------------------------------------- MXFP4: e:E8M0, qs[16] -> kvalues_mxfp4


@njit(**JIT_DOT)
def dot_mxfp4(w, x):
    acc = carray(stack_f32(32), 32)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 32):
        blk = w[17 * b:17 * b + 17]
        xb = x[32 * b:32 * b + 32]
        d = E8M0_HALF[blk[0]]
        lut16(KVALUES_MXFP4, blk, 1, 0, v, 0)
        lut16(KVALUES_MXFP4, blk, 1, 4, v, 16)
        for j in range(16):
            acc[j] += v[j] * d * xb[j]
        for j in range(16):
            acc[16 + j] += v[16 + j] * d * xb[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_mxfp4(w, out):
    v = carray(stack_f32(32), 32)
    for b in range(out.shape[0] // 32):
        blk = w[17 * b:17 * b + 17]
        ob = out[32 * b:32 * b + 32]
        d = E8M0_HALF[blk[0]]
        lut16(KVALUES_MXFP4, blk, 1, 0, v, 0)
        lut16(KVALUES_MXFP4, blk, 1, 4, v, 16)
        for j in range(32):
            v[j] = d * v[j]
        store32(v, ob)
