"""Integer row kernels: weights' integer codes times int8-rounded activations, as llama.cpp's `vec_dot`s.

llama.cpp rounds a product's activations to int8 blocks (Q8_0/Q8_1 for the 32-element types) and
multiplies them with the weights' integer codes in integer SIMD (`vpdpbusd` on AVX-512 VNNI / AVX-VNNI,
`vpmaddubsw` on AVX2), scaling each block's exact integer sum by `d_w * d_x`. The float kernels of
rows_legacy compute the same products from the dequantized values (d_w*q_w * d_x*q_x in float32 lanes),
which costs a float conversion and FMA per element: 2048x8192 Q4_1 took ~600 us on two cores against
~350 us this way. The integer sums are exact, so these kernels round only the per-block scaling --
closer to llama.cpp than the float kernels, never further.

The activation row (`x`, uint8) is `activations.pack_q8_32`'s layout: n int8 codes, then n / 32 float32
scales d (f16-rounded, as Q8_0/Q8_1 store them), then n / 32 float32 block sums s = f16(d32 * sum(q))
(Q8_1's, which Q4_1/Q5_1 multiply by their offsets m).

One block is one call of an intrinsic of int_intrinsics.py: unpack the weight codes of 32 elements to
unsigned bytes, take the 8 lanes of 4-byte integer dot products with x's codes (vpdpbusd: u8 x s8, exact
int32 sums), subtract the bias the codes carry, and accumulate -- in float (`scale * lanes`, the 32-element
types) or in int32 with the sub-block scales (the K-quants, scaled once per super-block by `flush8`).
On a host without VNNI the same integer sums are written in generic IR, so every host computes the
same lanes.

Each type's kernel is made for NT tokens at once (`dot<NT>_<type>(w, x, xo, res)`: x the flat packed
rows, xo a stack array of the NT tokens' row offsets, res[t] each token's result): the weight row is
unpacked once for all of them and each token's arithmetic is exactly its NT=1 arithmetic (lane k holds
elements 4k..4k+3 of a block; a token's result is its 8 lanes summed in order, then Q4_1/Q5_1's
offsets or the K-quants' mins), so a group of tokens (products.dot_rows_multi) gets bit for bit what
each gets alone, for a quarter of the unpacking.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from .int_intrinsics import (BYTE, LUT, LUT_IQ4NL, LUT_MXFP4, NIB, NIB5, acc_block32, f32_at, flush8, iacc_bits32,
                             iacc_lut16, mins_fma, q2k_scales, q3k_scales, stack_i32)
from .rows_common import E8M0_HALF, JIT_DOT, f16_at, stack_f32

# the token counts the kernels are built for: a lone token, and the groups of dot_rows_multi
NTS = (1, 2, 4)


@njit(inline="always")
def hsum8_at(acc, t):
    """The 8 lanes of token t summed in order."""
    s = np.float32(0.0)
    for j in range(8):
        s += acc[8 * t + j]
    return s


def _make_dot(nt: int, block_bytes: int, kind: int, bias: int, code_off: int, aux_off: int, tbl, scale_kind: str,
              offsets: bool):
    """The integer dot of a 32-element type against NT packed q8 rows: blocks of `block_bytes`, codes at
    `code_off` within a block (qh bits at `aux_off`), scale an f16 at 0 ("f16") or an E8M0 byte
    ("e8m0"); `offsets`: an f16 m at byte 2 multiplies x's block sums (Q4_1, Q5_1)."""

    e8m0 = scale_kind == "e8m0"  # a bool constant folds; a string compare would run per block
    n_lanes = 8 * nt  # a constant: stack arrays take literal sizes

    @njit(**JIT_DOT)
    def dot(w, x, xo, res):
        acc = carray(stack_f32(n_lanes), n_lanes)
        sc = carray(stack_f32(nt), nt)
        sm = carray(stack_f32(nt), nt)
        for j in range(n_lanes):
            acc[j] = np.float32(0.0)
        for t in range(nt):
            sm[t] = np.float32(0.0)
        nb = w.shape[0] // block_bytes
        n = 32 * nb
        for b in range(nb):
            o = block_bytes * b
            dw = E8M0_HALF[w[o]] if e8m0 else f16_at(w, o)
            for t in range(nt):
                sc[t] = dw * f32_at(x, xo[t] + n + 4 * b)
            acc_block32(kind, bias, nt, acc, w, o + code_off, o + aux_off, tbl, x, xo, 32 * b, sc)
            if offsets:
                m = f16_at(w, o + 2)
                for t in range(nt):
                    sm[t] += m * f32_at(x, xo[t] + n + 4 * nb + 4 * b)
        for t in range(nt):
            res[t] = hsum8_at(acc, t) + sm[t]

    return dot


def _legacy(*spec):
    return {nt: _make_dot(nt, *spec) for nt in NTS}


dot_q4_0 = _legacy(18, NIB, 8, 2, 0, LUT_IQ4NL, "f16", False)
dot_q4_1 = _legacy(20, NIB, 0, 4, 0, LUT_IQ4NL, "f16", True)
dot_q5_0 = _legacy(22, NIB5, 16, 6, 2, LUT_IQ4NL, "f16", False)
dot_q5_1 = _legacy(24, NIB5, 0, 8, 4, LUT_IQ4NL, "f16", True)
dot_q8_0 = _legacy(34, BYTE, 128, 2, 0, LUT_IQ4NL, "f16", False)
dot_iq4_nl = _legacy(18, LUT, 128, 2, 0, LUT_IQ4NL, "f16", False)
dot_mxfp4 = _legacy(17, LUT, 128, 1, 0, LUT_MXFP4, "e8m0", False)


# ---------------------------------------------------------------- the 256-element K-quants, against Q8_K
# x rows are `activations.pack_q8_k`'s layout: n int8 codes, n / 256 float32 scales d, then n / 16
# float32 sums of 16 codes (llama.cpp's bsums; exact integers). A super-block's sub-block sums are
# integers times integer scales, accumulated in int32 lanes (`iacc_bits32`) and scaled once by
# d_w * d_x (`flush8`), as ggml's vec_dot_q*_K_q8_K do; the mins (Q2_K, Q4_K, Q5_K) multiply x's bsums
# (sums of integers below 2^24: exact in float32, whatever the order).


@njit(inline="always")
def k4_scale_min(w, o, j):
    """get_scale_min_k4: the 6-bit scale and min of sub-block j of the Q4_K/Q5_K block at w[o]."""
    if j < 4:
        return np.int32(w[o + 4 + j] & 63), np.int32(w[o + 8 + j] & 63)
    sc = np.int32(w[o + 8 + j] & 15) | (np.int32(w[o + j] >> 6) << 4)
    mn = np.int32(w[o + 8 + j] >> 4) | (np.int32(w[o + 4 + j] >> 6) << 4)
    return sc, mn


@njit(inline="always")
def q3k_scale(w, o, j):
    """The signed 6-bit scale (minus 32) of group j of the Q3_K block at w[o] (scales at o + 96)."""
    lo = np.int32(w[o + 96 + (j & 7)] >> (4 * (j >> 3))) & 15
    hi = np.int32(w[o + 104 + (j & 3)] >> (2 * (j >> 2))) & 3
    return (lo | (hi << 4)) - 32


Q2K, Q3K, Q4K, Q5K, Q6K, IQ4XS = range(6)


def _make_dot_k(nt: int, block_bytes: int, kind: str):
    """The integer dot of a K-quant (`kind`: q2_k, q3_k, q4_k, q5_k, q6_k, iq4_xs) against NT packed
    Q8_K rows. Layouts (byte offsets in a super-block): Q2_K scales (4-bit scale, 4-bit min per 16) at
    0, qs at 16, d at 80, dmin at 82; Q3_K hmask at 0, qs at 32, scales at 96, d at 108 (q = low 2 bits
    + 4 * high bit - 4); Q4_K d, dmin, 12 scale bytes, qs at 16; Q5_K the same with qh at 16, qs at 48;
    Q6_K ql at 0, qh at 128, int8 scales (one per 16) at 192, d at 208 (q = 6 bits - 32); IQ4_XS d at 0,
    scales_h (u16) at 2, scales_l at 4, qs at 8 (codebook values times ls - 32)."""
    code = {"q2_k": Q2K, "q3_k": Q3K, "q4_k": Q4K, "q5_k": Q5K, "q6_k": Q6K, "iq4_xs": IQ4XS}[kind]  # ints fold
    high = 1 if kind == "q5_k" else 0
    n_lanes = 8 * nt
    qs_off = 48 if kind == "q5_k" else 16

    @njit(inline="always")
    def chunk45(w, o, c, x, xo, xb, iacc, gb, summ):
        """Q4_K/Q5_K: sub-blocks 2c (low nibbles) and 2c + 1 (high) of 32 bytes at qs + 32c; their mins
        times x's bsums into summ. Called with constant c: with a run-time loop the scale decoding
        branched per chunk and Q4_K ran at half the speed of Q4_0."""
        sc0, m0 = k4_scale_min(w, o, 2 * c)
        sc1, m1 = k4_scale_min(w, o, 2 * c + 1)
        iacc_bits32(0, 15, high, 4, nt, iacc, w, o + qs_off + 32 * c, 0, o + 16, 2 * c, x, xo, xb + 64 * c, sc0, sc0)
        iacc_bits32(0, 15, high, 4, nt, iacc, w, o + qs_off + 32 * c, 4, o + 16, 2 * c + 1, x, xo, xb + 64 * c + 32,
                    sc1, sc1)
        for t in range(nt):
            g = xo[t] + gb + 16 * c
            summ[t] += np.float32(m0) * (f32_at(x, g) + f32_at(x, g + 4)) + np.float32(m1) * (
                f32_at(x, g + 8) + f32_at(x, g + 12))

    @njit(**JIT_DOT)
    def dot(w, x, xo, res):
        acc = carray(stack_f32(n_lanes), n_lanes)
        iacc = carray(stack_i32(n_lanes), n_lanes)
        sc = carray(stack_f32(nt), nt)
        sm = carray(stack_f32(nt), nt)
        summ = carray(stack_f32(nt), nt)
        ms = carray(stack_f32(nt), nt)
        scs = carray(stack_i32(16), 16)  # Q2_K's, Q3_K's group scales
        for j in range(n_lanes):
            acc[j] = np.float32(0.0)
            iacc[j] = np.int32(0)
        for t in range(nt):
            sm[t] = np.float32(0.0)
        nbk = w.shape[0] // block_bytes
        n = 256 * nbk
        ob = n + 4 * nbk  # x's bsums
        for b in range(nbk):
            o = block_bytes * b
            xb = 256 * b
            for t in range(nt):
                summ[t] = np.float32(0.0)
            if code == Q4K or code == Q5K:
                gb = ob + 64 * b
                chunk45(w, o, 0, x, xo, xb, iacc, gb, summ)
                chunk45(w, o, 1, x, xo, xb, iacc, gb, summ)
                chunk45(w, o, 2, x, xo, xb, iacc, gb, summ)
                chunk45(w, o, 3, x, xo, xb, iacc, gb, summ)
                d, dmin = f16_at(w, o), f16_at(w, o + 2)
            elif code == Q6K:
                for h in range(2):
                    for k in range(4):
                        s = o + 192 + 8 * h + 2 * k
                        iacc_bits32(32, 15, 3, 4, nt, iacc, w, o + 64 * h + 32 * (k & 1), 4 * (k >> 1),
                                    o + 128 + 32 * h, 2 * k, x, xo, xb + 128 * h + 32 * k, np.int8(w[s]),
                                    np.int8(w[s + 1]))
                d, dmin = f16_at(w, o + 208), np.float32(0.0)
            elif code == Q2K:
                q2k_scales(w, o, scs)
                for h in range(2):
                    for k in range(4):
                        j = 8 * h + 2 * k
                        iacc_bits32(0, 3, 0, 0, nt, iacc, w, o + 16 + 32 * h, 2 * k, o, 0, x, xo,
                                    xb + 128 * h + 32 * k, scs[j], scs[j + 1])
                d, dmin = f16_at(w, o + 80), f16_at(w, o + 82)
                for t in range(nt):
                    ms[t] = -(f32_at(x, xo[t] + n + 4 * b) * dmin)
                mins_fma(nt, acc, w, o, x, xo, ob + 64 * b, ms)  # into the lanes, before the block's sums
                dmin = np.float32(0.0)
            elif code == Q3K:
                q3k_scales(w, o, scs)
                for h in range(2):
                    for k in range(4):
                        j = 8 * h + 2 * k
                        iacc_bits32(4, 3, 1, 2, nt, iacc, w, o + 32 + 32 * h, 2 * k, o, 4 * h + k, x, xo,
                                    xb + 128 * h + 32 * k, scs[j], scs[j + 1])
                d, dmin = f16_at(w, o + 108), np.float32(0.0)
            else:  # iq4_xs
                sh = np.int32(w[o + 2]) | (np.int32(w[o + 3]) << 8)
                for ib in range(8):
                    ls = np.int32((w[o + 4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
                    iacc_lut16(nt, iacc, w, o + 8 + 16 * ib, LUT_IQ4NL, x, xo, xb + 32 * ib, ls - 32)
                d, dmin = f16_at(w, o), np.float32(0.0)
            for t in range(nt):
                dx = f32_at(x, xo[t] + n + 4 * b)
                sc[t] = d * dx
                sm[t] += dmin * dx * summ[t]
            flush8(nt, acc, iacc, sc)
        for t in range(nt):
            res[t] = hsum8_at(acc, t) - sm[t]

    return dot


def _k(block_bytes: int, kind: str):
    return {nt: _make_dot_k(nt, block_bytes, kind) for nt in NTS}


dot_q2_k = _k(84, "q2_k")
dot_q3_k = _k(110, "q3_k")
dot_q4_k = _k(144, "q4_k")
dot_q5_k = _k(176, "q5_k")
dot_q6_k = _k(210, "q6_k")
dot_iq4_xs = _k(136, "iq4_xs")
