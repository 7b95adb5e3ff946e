"""Integer GEMM for prompts: 8 weight rows at a time against every token, in vpdpbusd.

A prompt's product multiplies each weight row with many tokens. The row kernels (rows_int.py) keep
8 lanes of partial sums per token and scale them per block in float -- a conversion and an FMA for
every 32 products, the same work per element as the float tiles they replace. Here each work item
first unpacks 8 rows into a *panel*, once for all the tokens: their signed integer codes interleaved by
4 elements (`int_intrinsics.panel_acc`'s layout), so that one vpdpbusd with 4 of a token's bytes
broadcast multiplies 4 elements of all 8 rows and lane r of the accumulator is row r's exact sum --
no lane sums at all -- and the per-chunk float scaling is done for 8 rows at once. This is the layout
llama.cpp's CPU "repack" buffers give Q4_0 and friends at load time; built per work item instead, it
costs no memory and suits every type with a chunk unpacker below.

Arithmetic, per (row, token, 32-element chunk c): the integer sums of the two 16-element halves,
corrected for x's +128 (x is given as unsigned bytes, x + 128; the panel keeps 128 * the sum of each
half's codes), times the half's float scale (the block's d, or d * the sub-block scale of a K-quant)
times x's d; Q4_1's offset times x's Q8_1 block sum, and the K-quants' mins times d_x * x's sums, are
added per chunk. The integer parts are exact; the float parts round per chunk rather than per
super-block as ggml's vec_dots do, well within the conformance bars (a prompt's rows are not compared
bit for bit with decode rows: they take this path whatever the company, so batch invariance holds).

Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4 (x as Q8_0/Q8_1 blocks) and Q3_K, Q4_K, Q5_K, Q6_K,
IQ4_XS (x as Q8_K super-blocks). Q2_K (a min per 16 elements, where the panel keeps one per chunk)
and the float types keep the float tiles.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit

from quant import GGMLType

from .int_intrinsics import BYTE, FIELD, LUT, LUT_IQ4NL, LUT_MXFP4, NIB, NIB5, panel_acc, panel_codes, stack_i64
from .rows_common import E8M0_HALF, FM_DOT, f16_at, stack_f32
from .rows_int import k4_scale_min, q3k_scale

_JIT = dict(fastmath=FM_DOT, error_model="numpy", boundscheck=False, nogil=True)
_JIT_INLINE = dict(_JIT, inline="always")

PANEL = 8  # rows a panel holds (the lanes of one vpdpbusd)
_T = LUT_IQ4NL  # the codebook argument of the unpackers that read none


# ---------------------------------------------------------------- chunk unpackers
# chunk_<type>(w, o, c, codes, coff) unpacks chunk c (32 elements) of the row at w[o:] into a panel at
# codes[coff:] (`panel_codes`: signed codes, interleaved) and returns (scale of elements 0-15, scale of
# 16-31, offset coefficient, the two halves' code sums as lo + 2^32 * hi): the row's values are
# scale * code, plus the coefficient times x's chunk term (Q4_1: m * x's Q8_1 block sum; K-quants:
# -dmin * m times d_x * x's chunk sum).


def _legacy_chunk(block_bytes: int, kind: int, bias: int, code_off: int, aux_off: int, tbl, e8m0: bool,
                  offsets: bool):
    """The unpacker of a 32-element type: blocks of `block_bytes`, codes stored as `kind` at `code_off`
    (NIB5's high bits at `aux_off`), scale an f16 at 0 or an E8M0 byte (`e8m0`); `offsets`: an f16 m
    at byte 2 (Q4_1, Q5_1)."""

    @njit(**_JIT_INLINE)
    def chunk(w, o, c, codes, coff):
        b = o + block_bytes * c
        sums = panel_codes(kind, bias, 0, 0, 4, w, b + code_off, b + aux_off, 0, 0, tbl, codes, coff)
        d = E8M0_HALF[w[b]] if e8m0 else f16_at(w, b)
        return d, d, f16_at(w, b + 2) if offsets else np.float32(0.0), sums

    return chunk


chunk_q4_0 = _legacy_chunk(18, NIB, 8, 2, 0, _T, False, False)
chunk_q4_1 = _legacy_chunk(20, NIB, 0, 4, 0, _T, False, True)
chunk_q5_0 = _legacy_chunk(22, NIB5, 16, 6, 2, _T, False, False)
chunk_q5_1 = _legacy_chunk(24, NIB5, 0, 8, 4, _T, False, True)
chunk_q8_0 = _legacy_chunk(34, BYTE, 0, 2, 0, _T, False, False)
chunk_iq4_nl = _legacy_chunk(18, LUT, 128, 2, 0, LUT_IQ4NL, False, False)
chunk_mxfp4 = _legacy_chunk(17, LUT, 128, 1, 0, LUT_MXFP4, True, False)


def _k45_chunk(block_bytes: int, high: int):
    """Q4_K (high=0) / Q5_K (high=1): sub-block j = c % 8 of super-block c // 8 (d, dmin, 12 bytes of
    6-bit scales and mins; Q5_K then 32 bytes of high bits, bit j of qh[l] for sub-block j; the nibbles:
    sub-blocks 2p and 2p+1 are the low and high nibbles of qs[32p:32p+32])."""
    qs = 48 if high else 16

    @njit(**_JIT_INLINE)
    def chunk(w, o, c, codes, coff):
        b = o + block_bytes * (c // 8)
        j = c % 8
        sums = panel_codes(FIELD, 0, 15, high, 4, w, b + qs + 32 * (j // 2), b + 16, 4 * (j % 2), j, _T, codes,
                           coff)
        sc, mn = k4_scale_min(w, b, j)
        ds = f16_at(w, b) * np.float32(sc)
        return ds, ds, -(f16_at(w, b + 2) * np.float32(mn)), sums

    return chunk


chunk_q4_k = _k45_chunk(144, 0)
chunk_q5_k = _k45_chunk(176, 1)


@njit(**_JIT_INLINE)
def chunk_q6_k(w, o, c, codes, coff):
    """Elements 32j..32j+31 (j = c % 8) of super-block c // 8 (210 bytes: ql[128], qh[64], 16 int8
    scales of 16 elements, d): element e = 128h + 32k + l has the low (k < 2) or high nibble of
    ql[64h + 32(k & 1) + l] and bits 2k, 2k+1 of qh[32h + l], minus 32."""
    b = o + 210 * (c // 8)
    j = c % 8
    h, k = j // 4, j % 4
    sums = panel_codes(FIELD, 32, 15, 3, 4, w, b + 64 * h + 32 * (k & 1), b + 128 + 32 * h, 4 * (k >> 1), 2 * k,
                       _T, codes, coff)
    d = f16_at(w, b + 208)
    s0 = np.int8(w[b + 192 + 2 * j])
    s1 = np.int8(w[b + 192 + 2 * j + 1])
    return d * np.float32(s0), d * np.float32(s1), np.float32(0.0), sums


@njit(**_JIT_INLINE)
def chunk_q3_k(w, o, c, codes, coff):
    """Elements 128h + 32k.. (c % 8 = 4h + k) of a 110-byte block (hmask[32], qs[64], 12 scale bytes, d):
    2 bits of qs[32 + 32h + l] at 2k, and bit 4h + k of hmask[l] set for +4, minus 4; signed 6-bit
    scales of 16 elements."""
    b = o + 110 * (c // 8)
    j = c % 8
    h, k = j // 4, j % 4
    sums = panel_codes(FIELD, 4, 3, 1, 2, w, b + 32 + 32 * h, b, 2 * k, 4 * h + k, _T, codes, coff)
    d = f16_at(w, b + 108)
    return (d * np.float32(q3k_scale(w, b, 8 * h + 2 * k)), d * np.float32(q3k_scale(w, b, 8 * h + 2 * k + 1)),
            np.float32(0.0), sums)


@njit(**_JIT_INLINE)
def chunk_iq4_xs(w, o, c, codes, coff):
    """Sub-block ib = c % 8 of a 136-byte block (d, 2 bytes of high scale bits, 4 of low, 16 bytes of
    IQ4_NL nibbles per sub-block at 8): scale d * (6-bit ls - 32)."""
    b = o + 136 * (c // 8)
    ib = c % 8
    sums = panel_codes(LUT, 128, 0, 0, 4, w, b + 8 + 16 * ib, 0, 0, 0, LUT_IQ4NL, codes, coff)
    sh = np.int32(w[b + 2]) | (np.int32(w[b + 3]) << 8)
    ls = np.int32((w[b + 4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
    ds = f16_at(w, b) * np.float32(ls - 32)
    return ds, ds, np.float32(0.0), sums


# x's layout per weight type (activations.pack_q8_32 / pack_q8_k) and what the offsets multiply
X_Q8_0, X_Q8_1, X_Q8_K = 0, 1, 2

CHUNKS = {  # (unpacker, x's layout, whether a chunk's halves share one scale)
    GGMLType.Q4_0: (chunk_q4_0, X_Q8_0, 1),
    GGMLType.Q4_1: (chunk_q4_1, X_Q8_1, 1),
    GGMLType.Q5_0: (chunk_q5_0, X_Q8_0, 1),
    GGMLType.Q5_1: (chunk_q5_1, X_Q8_1, 1),
    GGMLType.Q8_0: (chunk_q8_0, X_Q8_0, 1),
    GGMLType.IQ4_NL: (chunk_iq4_nl, X_Q8_0, 1),
    GGMLType.MXFP4: (chunk_mxfp4, X_Q8_0, 1),
    GGMLType.Q3_K: (chunk_q3_k, X_Q8_K, 0),
    GGMLType.Q4_K: (chunk_q4_k, X_Q8_K, 1),
    GGMLType.Q5_K: (chunk_q5_k, X_Q8_K, 1),
    GGMLType.Q6_K: (chunk_q6_k, X_Q8_K, 0),
    GGMLType.IQ4_XS: (chunk_iq4_xs, X_Q8_K, 1),
}


def make_gemm(chunk, xkind: int, same: int):
    """run(w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2): out2[m_out[m], r] = row r of expert e
    times token m_x[m] of xu (x packed for the type, its codes + 128: `unsigned_codes`), for
    r0 <= r < r1 and m0 <= m < m1."""

    @njit(**_JIT)
    def build(w3, e, p0, nr, nchunk, codes, sc, mn, wc):
        """The panel of rows p0..p0+nr-1 (nr <= 8; missing rows: zero codes and scales)."""
        for r in range(PANEL):
            if r >= nr:
                c32 = codes.view(np.uint32)
                for c in range(nchunk):
                    for k in range(8):
                        c32[64 * c + 8 * k + r] = 0
                    sc[16 * c + r] = 0.0
                    sc[16 * c + 8 + r] = 0.0
                    mn[8 * c + r] = 0.0
                    wc[16 * c + r] = 0
                    wc[16 * c + 8 + r] = 0
                continue
            wr = w3[e, p0 + r]
            for c in range(nchunk):
                s0, s1, m, sums = chunk(wr, 0, c, codes, 256 * c + 4 * r)
                sc[16 * c + r] = s0
                sc[16 * c + 8 + r] = s1
                mn[8 * c + r] = m
                wc[16 * c + r] = 128 * np.int32(np.uint32(sums & 0xFFFFFFFF))  # x's +128 times the half's codes
                wc[16 * c + 8 + r] = 128 * np.int32(np.uint32(sums >> 32))

    @njit(**_JIT)
    def run(w3, e, r0, r1, n_in, xu, m_x, m0, m1, m_out, out2):
        nchunk = n_in // 32
        width = xu.shape[1]
        xf = xu.reshape(-1)
        codes = np.empty(256 * nchunk, np.uint8)
        sc = np.empty(16 * nchunk, np.float32)
        mn = np.empty(8 * nchunk, np.float32)
        wc = np.empty(16 * nchunk, np.int32)
        xo = carray(stack_i64(4), 4)
        acc = carray(stack_f32(32), 32)
        for p0 in range(r0, r1, PANEL):
            nr = min(PANEL, r1 - p0)
            build(w3, e, p0, nr, nchunk, codes, sc, mn, wc)
            for m in range(m0, m1, 4):  # 4 tokens at a time; the last group repeats its last token
                for t in range(4):
                    xo[t] = m_x[min(m + t, m1 - 1)] * width
                for i in range(32):
                    acc[i] = 0.0
                for c in range(nchunk):
                    if xkind == X_Q8_K:
                        dxo = n_in + 4 * (c // 8)
                        xmo = n_in + 4 * (n_in // 256) + 8 * c
                    else:
                        dxo = n_in + 4 * c
                        xmo = n_in + 4 * nchunk + 4 * c
                    panel_acc(4, xkind, same, acc, codes, 256 * c, sc, mn, wc, c, xf, xo, 32 * c, dxo, xmo)
                for t in range(min(4, m1 - m)):
                    o = m_out[m + t]
                    for r in range(nr):
                        out2[o, p0 + r] = acc[8 * t + r]

    return run


@njit(**_JIT)
def unsigned_codes(xq, n_in):
    """x's packed rows with their codes + 128 (unsigned bytes: vpdpbusd's first operand)."""
    xu = xq.copy()
    for i in range(xu.shape[0]):
        for j in range(n_in):
            xu[i, j] ^= np.uint8(0x80)
    return xu


GEMMS = {t: make_gemm(*spec) for t, spec in CHUNKS.items()}
