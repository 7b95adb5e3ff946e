"""Row kernels for the 256-element super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS.

`dot_<type>(w, x) -> float32` and `dequant_row_<type>(w, out)` as in rows_legacy. Layouts and the
closed forms per element: shared/reference/formats.md §2.4. A super-block is walked as in ggml's
`dequantize_row_*`: (half h of 128) x (shift k of 32) x (16-element group); each group has its own
scale (and min), then one 16-lane loop does `acc += (dl*q - ml) * x`. Consecutive groups
alternate between `acc[0:16]` and `acc[16:32]` (two independent FMA chains).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from .rows_common import JIT_DEQ, JIT_DOT, KVALUES_IQ4NL, f16_at, lut16, stack_f32
from .rows_legacy import hsum32, store32, zero32


@njit(inline="always")
def store16(v, out, o):
    for j in range(16):
        out[o + j] = v[j]


# Scales are decoded once per super-block into small stack arrays (`dl`, `ml`) with branch-free
# 4/8/16-lane loops; that alone is ~1.5x faster than decoding them inside the group loops.


@njit(inline="always")
def q2k_scales(blk, dl, ml):
    d = f16_at(blk, 80)
    dmin = f16_at(blk, 82)
    for j in range(16):
        dl[j] = d * np.float32(blk[j] & 15)
    for j in range(16):
        ml[j] = dmin * np.float32(blk[j] >> 4)


@njit(inline="always")
def q3k_scales(blk, dl):
    """dl[j] = d * (6-bit signed scale of group j); scales at blk[96:108], d at blk[108:110]."""
    d = f16_at(blk, 108)
    for j in range(8):
        hi = np.int32((blk[104 + (j & 3)] >> (2 * (j >> 2))) & 3)
        dl[j] = np.float32(np.int32(blk[96 + j] & 15) | (hi << 4))
    for j in range(8):
        hi = np.int32((blk[104 + (j & 3)] >> (2 * (j >> 2) + 4)) & 3)
        dl[8 + j] = np.float32(np.int32(blk[96 + j] >> 4) | (hi << 4))
    for j in range(16):
        dl[j] = d * (dl[j] - np.float32(32))


@njit(inline="always")
def k4_scales(blk, dl, ml):
    """get_scale_min_k4 for the 8 sub-blocks of a Q4_K/Q5_K block: dl = d*sc, ml = dmin*m."""
    d = f16_at(blk, 0)
    dmin = f16_at(blk, 2)
    for j in range(4):
        dl[j] = d * np.float32(blk[4 + j] & 63)
    for j in range(4):
        ml[j] = dmin * np.float32(blk[8 + j] & 63)
    for j in range(4):
        dl[4 + j] = d * np.float32((blk[12 + j] & 15) | ((blk[4 + j] >> 6) << 4))
    for j in range(4):
        ml[4 + j] = dmin * np.float32((blk[12 + j] >> 4) | ((blk[8 + j] >> 6) << 4))


# ---------------------------------------------------------------- Q2_K: scales[16], qs[64], d, dmin
# element (h, k, l): q = (qs[32h + l] >> 2k) & 3, group 8h + 2k + l // 16


@njit(**JIT_DOT)
def dot_q2_k(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    ml = carray(stack_f32(16), 16)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[84 * b:84 * b + 84]
        xb = x[256 * b:256 * b + 256]
        q2k_scales(blk, dl, ml)
        for h in range(2):
            q = blk[16 + 32 * h:48 + 32 * h]
            for k in range(4):
                g = 8 * h + 2 * k
                xs = xb[128 * h + 32 * k:128 * h + 32 * k + 32]
                d0 = dl[g]
                m0 = ml[g]
                d1 = dl[g + 1]
                m1 = ml[g + 1]
                for j in range(16):
                    acc[j] += (d0 * np.float32((q[j] >> (2 * k)) & 3) - m0) * xs[j]
                for j in range(16):
                    acc[16 + j] += (d1 * np.float32((q[16 + j] >> (2 * k)) & 3) - m1) * xs[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q2_k(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    ml = carray(stack_f32(16), 16)
    for b in range(out.shape[0] // 256):
        blk = w[84 * b:84 * b + 84]
        ob = out[256 * b:256 * b + 256]
        q2k_scales(blk, dl, ml)
        for h in range(2):
            q = blk[16 + 32 * h:48 + 32 * h]
            for k in range(4):
                g = 8 * h + 2 * k
                d0 = dl[g]
                m0 = ml[g]
                d1 = dl[g + 1]
                m1 = ml[g + 1]
                for j in range(16):
                    v[j] = d0 * np.float32((q[j] >> (2 * k)) & 3) - m0
                for j in range(16):
                    v[16 + j] = d1 * np.float32((q[16 + j] >> (2 * k)) & 3) - m1
                store32(v, ob[128 * h + 32 * k:128 * h + 32 * k + 32])


# ---------------------------------------------------------------- Q3_K: hmask[32], qs[64], scales[12], d
# q = ((qs[32h + l] >> 2k) & 3) - 4 + 4 * (bit (4h + k) of hmask[l])


@njit(**JIT_DOT)
def dot_q3_k(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[110 * b:110 * b + 110]
        xb = x[256 * b:256 * b + 256]
        q3k_scales(blk, dl)
        hm = blk[0:32]
        for h in range(2):
            q = blk[32 + 32 * h:64 + 32 * h]
            for k in range(4):
                g = 8 * h + 2 * k
                xs = xb[128 * h + 32 * k:128 * h + 32 * k + 32]
                for j in range(32):
                    v[j] = np.float32((hm[j] >> (4 * h + k)) & 1) * np.float32(4) - np.float32(4)
                d0 = dl[g]
                d1 = dl[g + 1]
                for j in range(16):
                    acc[j] += d0 * (np.float32((q[j] >> (2 * k)) & 3) + v[j]) * xs[j]
                for j in range(16):
                    acc[16 + j] += d1 * (np.float32((q[16 + j] >> (2 * k)) & 3) + v[16 + j]) * xs[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q3_k(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    for b in range(out.shape[0] // 256):
        blk = w[110 * b:110 * b + 110]
        ob = out[256 * b:256 * b + 256]
        q3k_scales(blk, dl)
        hm = blk[0:32]
        for h in range(2):
            q = blk[32 + 32 * h:64 + 32 * h]
            for k in range(4):
                g = 8 * h + 2 * k
                for j in range(32):
                    v[j] = np.float32(np.int32((q[j] >> (2 * k)) & 3) - 4 + 4 * np.int32((hm[j] >> (4 * h + k)) & 1))
                d0 = dl[g]
                d1 = dl[g + 1]
                for j in range(16):
                    v[j] = d0 * v[j]
                for j in range(16):
                    v[16 + j] = d1 * v[16 + j]
                store32(v, ob[128 * h + 32 * k:128 * h + 32 * k + 32])


# ---------------------------------------------------------------- Q4_K: d, dmin, scales[12], qs[128]
# 64-element chunk c: byte qs[32c + l] low nibble -> sub-block 2c, high nibble -> 2c + 1


@njit(**JIT_DOT)
def dot_q4_k(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    ml = carray(stack_f32(8), 8)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[144 * b:144 * b + 144]
        xb = x[256 * b:256 * b + 256]
        k4_scales(blk, dl, ml)
        for c in range(4):
            q = blk[16 + 32 * c:48 + 32 * c]
            xs = xb[64 * c:64 * c + 64]
            d0 = dl[2 * c]
            n0 = ml[2 * c]
            d1 = dl[2 * c + 1]
            n1 = ml[2 * c + 1]
            for j in range(16):
                acc[j] += (d0 * np.float32(q[j] & 15) - n0) * xs[j]
            for j in range(16):
                acc[16 + j] += (d0 * np.float32(q[16 + j] & 15) - n0) * xs[16 + j]
            for j in range(16):
                acc[j] += (d1 * np.float32(q[j] >> 4) - n1) * xs[32 + j]
            for j in range(16):
                acc[16 + j] += (d1 * np.float32(q[16 + j] >> 4) - n1) * xs[48 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q4_k(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    ml = carray(stack_f32(8), 8)
    for b in range(out.shape[0] // 256):
        blk = w[144 * b:144 * b + 144]
        ob = out[256 * b:256 * b + 256]
        k4_scales(blk, dl, ml)
        for c in range(4):
            q = blk[16 + 32 * c:48 + 32 * c]
            d0 = dl[2 * c]
            n0 = ml[2 * c]
            d1 = dl[2 * c + 1]
            n1 = ml[2 * c + 1]
            for j in range(32):
                v[j] = d0 * np.float32(q[j] & 15) - n0
            store32(v, ob[64 * c:64 * c + 32])
            for j in range(32):
                v[j] = d1 * np.float32(q[j] >> 4) - n1
            store32(v, ob[64 * c + 32:64 * c + 64])


# ---------------------------------------------------------------- Q5_K: d, dmin, scales[12], qh[32], qs[128]
# as Q4_K, plus 16 * bit (2c) (low nibbles) / bit (2c + 1) (high nibbles) of qh[l]


@njit(**JIT_DOT)
def dot_q5_k(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    ml = carray(stack_f32(8), 8)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[176 * b:176 * b + 176]
        xb = x[256 * b:256 * b + 256]
        k4_scales(blk, dl, ml)
        qh = blk[16:48]
        for c in range(4):
            q = blk[48 + 32 * c:80 + 32 * c]
            xs = xb[64 * c:64 * c + 64]
            d0 = dl[2 * c]
            n0 = ml[2 * c]
            d1 = dl[2 * c + 1]
            n1 = ml[2 * c + 1]
            for j in range(32):
                v[j] = np.float32((qh[j] >> (2 * c)) & 1) * np.float32(16)
            for j in range(16):
                acc[j] += (d0 * (np.float32(q[j] & 15) + v[j]) - n0) * xs[j]
            for j in range(16):
                acc[16 + j] += (d0 * (np.float32(q[16 + j] & 15) + v[16 + j]) - n0) * xs[16 + j]
            for j in range(32):
                v[j] = np.float32((qh[j] >> (2 * c + 1)) & 1) * np.float32(16)
            for j in range(16):
                acc[j] += (d1 * (np.float32(q[j] >> 4) + v[j]) - n1) * xs[32 + j]
            for j in range(16):
                acc[16 + j] += (d1 * (np.float32(q[16 + j] >> 4) + v[16 + j]) - n1) * xs[48 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q5_k(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    ml = carray(stack_f32(8), 8)
    for b in range(out.shape[0] // 256):
        blk = w[176 * b:176 * b + 176]
        ob = out[256 * b:256 * b + 256]
        k4_scales(blk, dl, ml)
        qh = blk[16:48]
        for c in range(4):
            q = blk[48 + 32 * c:80 + 32 * c]
            d0 = dl[2 * c]
            n0 = ml[2 * c]
            d1 = dl[2 * c + 1]
            n1 = ml[2 * c + 1]
            for j in range(32):
                v[j] = np.float32((qh[j] >> (2 * c)) & 1) * np.float32(16)
            for j in range(32):
                v[j] = d0 * (np.float32(q[j] & 15) + v[j]) - n0
            store32(v, ob[64 * c:64 * c + 32])
            for j in range(32):
                v[j] = np.float32((qh[j] >> (2 * c + 1)) & 1) * np.float32(16)
            for j in range(32):
                v[j] = d1 * (np.float32(q[j] >> 4) + v[j]) - n1
            store32(v, ob[64 * c + 32:64 * c + 64])


# ---------------------------------------------------------------- Q6_K: ql[128], qh[64], scales[16] int8, d
# element (h, k, l): nibble of ql[64h + 32(k%2) + l] (low if k < 2), 2 high bits (qh[32h + l] >> 2k) & 3


@njit(inline="always")
def q6k_scales(blk, dl):
    d = f16_at(blk, 208)
    for j in range(16):
        dl[j] = d * np.float32(np.int8(blk[192 + j]))


@njit(**JIT_DOT)
def dot_q6_k(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[210 * b:210 * b + 210]
        xb = x[256 * b:256 * b + 256]
        q6k_scales(blk, dl)
        for h in range(2):
            for k in range(4):
                ns = 4 * (k >> 1)
                for half in range(2):
                    d = dl[8 * h + 2 * k + half]
                    ql = blk[64 * h + 32 * (k & 1) + 16 * half:64 * h + 32 * (k & 1) + 16 * half + 16]
                    qh = blk[128 + 32 * h + 16 * half:128 + 32 * h + 16 * half + 16]
                    xs = xb[128 * h + 32 * k + 16 * half:128 * h + 32 * k + 16 * half + 16]
                    for j in range(16):
                        q = np.int32(((ql[j] >> ns) & 15) | (((qh[j] >> (2 * k)) & 3) << 4)) - 32
                        acc[16 * half + j] += d * np.float32(q) * xs[j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_q6_k(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(16), 16)
    for b in range(out.shape[0] // 256):
        blk = w[210 * b:210 * b + 210]
        ob = out[256 * b:256 * b + 256]
        q6k_scales(blk, dl)
        for h in range(2):
            qh = blk[128 + 32 * h:160 + 32 * h]
            for k in range(4):
                ns = 4 * (k >> 1)
                ql = blk[64 * h + 32 * (k & 1):64 * h + 32 * (k & 1) + 32]
                d0 = dl[8 * h + 2 * k]
                d1 = dl[8 * h + 2 * k + 1]
                for j in range(16):
                    q = np.int32(((ql[j] >> ns) & 15) | (((qh[j] >> (2 * k)) & 3) << 4)) - 32
                    v[j] = d0 * np.float32(q)
                for j in range(16):
                    q = np.int32(((ql[16 + j] >> ns) & 15) | (((qh[16 + j] >> (2 * k)) & 3) << 4)) - 32
                    v[16 + j] = d1 * np.float32(q)
                store32(v, ob[128 * h + 32 * k:128 * h + 32 * k + 32])


# ---------------------------------------------------------------- IQ4_XS: d, scales_h:u16, scales_l[4], qs[128]
# sub-block ib (32 elements): 6-bit scale ls - 32; bytes qs[16ib + j]: low nibble -> 32ib + j, high -> +16


@njit(inline="always")
def iq4xs_scales(blk, dl):
    d = f16_at(blk, 0)
    sh = np.int32(blk[2]) | (np.int32(blk[3]) << 8)
    for ib in range(8):
        ls = np.int32((blk[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
        dl[ib] = d * np.float32(ls - 32)


@njit(**JIT_DOT)
def dot_iq4_xs(w, x):
    acc = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    v = carray(stack_f32(32), 32)
    zero32(acc)
    for b in range(x.shape[0] // 256):
        blk = w[136 * b:136 * b + 136]
        xb = x[256 * b:256 * b + 256]
        iq4xs_scales(blk, dl)
        for ib in range(8):
            d = dl[ib]
            xs = xb[32 * ib:32 * ib + 32]
            lut16(KVALUES_IQ4NL, blk, 8 + 16 * ib, 0, v, 0)
            lut16(KVALUES_IQ4NL, blk, 8 + 16 * ib, 4, v, 16)
            for j in range(16):
                acc[j] += d * v[j] * xs[j]
            for j in range(16):
                acc[16 + j] += d * v[16 + j] * xs[16 + j]
    return hsum32(acc)


@njit(**JIT_DEQ)
def dequant_row_iq4_xs(w, out):
    v = carray(stack_f32(32), 32)
    dl = carray(stack_f32(8), 8)
    for b in range(out.shape[0] // 256):
        blk = w[136 * b:136 * b + 136]
        ob = out[256 * b:256 * b + 256]
        iq4xs_scales(blk, dl)
        for ib in range(8):
            d = dl[ib]
            lut16(KVALUES_IQ4NL, blk, 8 + 16 * ib, 0, v, 0)
            lut16(KVALUES_IQ4NL, blk, 8 + 16 * ib, 4, v, 16)
            for j in range(32):
                v[j] = d * v[j]
            store32(v, ob[32 * ib:32 * ib + 32])
