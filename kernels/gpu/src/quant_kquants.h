/* quant_kquants.h: the 256-element super-block types, unit j = elements 32j..32j+31 of a block
 * (included by quant_blocks.h). Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS. Layouts: quant/kquants.py,
 * quant/nonlinear.py; the index names follow them: for unit j, h = j / 4 (which 128-half) and
 * k = j % 4 (which 32-run of the half), so element e = 128h + 32k + l = 32j + l.
 *
 * Scales are formed as ggml forms them: `dl = d * sc` and `ml = dmin * m` each rounded to float
 * first; the min is returned negated (m = -ml) so that w = dl * q + m = dl * q - ml exactly. */

#if QTYPE == 10 || QTYPE == 11 || QTYPE == 12 || QTYPE == 13 || QTYPE == 14 || QTYPE == 23
#define QB_ELEMS 256
#define QB_VEC VEC_Q8_K
#endif

#if QTYPE == 10
/* Q2_K: scales[16] ([m | sc] 4 bits each) | qs[64] | d f16 | dmin f16
 *       code = (qs[32h + l] >> 2k) & 3, sub-blocks of 16: w = (d * sc) * code - (dmin * m) */
#define QB_BYTES 84
#define QB_HAS_MIN 1
#define QB_SUB16 1
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)(u >> 3) * QB_BYTES;
    int j = u & 7, h = j >> 2, k = j & 3;
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = (int)((ld32_a4(b + 16 + 32 * h + 4 * i) >> (2 * k)) & 0x03030303u);
    float dd = ld_f16(b + 80), dmin = ld_f16(b + 82);
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        uint sc = b[2 * j + s];
        d[s] = dd * (float)(sc & 15u);
        m[s] = -(dmin * (float)(sc >> 4));
    }
}

#elif QTYPE == 11
/* Q3_K: hmask[32] | qs[64] | scales[12] (16 signed 6-bit) | d f16
 *       code = ((qs[32h + l] >> 2k) & 3) - (bit j of hmask[l] ? 0 : 4); w = (d * (sc - 32)) * code */
#define QB_BYTES 110
#define QB_HAS_MIN 0
#define QB_SUB16 1
DEVICE int q3k_scale(GLOBAL const uchar* s, int i) {
    int lo = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
    int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)(u >> 3) * QB_BYTES;
    int j = u & 7, h = j >> 2, k = j & 3;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        uint lo = (ld32_a2(b + 32 + 32 * h + 4 * i) >> (2 * k)) & 0x03030303u;
        uint hb = (ld32_a2(b + 4 * i) >> j) & 0x01010101u;
        q[i] = sub_bytes(lo | (hb << 2), 0x04040404u);
    }
    float dd = ld_f16(b + 108);
    d[0] = dd * (float)q3k_scale(b + 96, 2 * j);
    d[1] = dd * (float)q3k_scale(b + 96, 2 * j + 1);
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 12 || QTYPE == 13
/* Q4_K: d f16 | dmin f16 | scales[12] | qs[128]
 * Q5_K: d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
 *       sub-blocks of 32 = units; low 4 bits in nibble (j & 1) of qs[32 (j / 2) + l], Q5_K's bit 4
 *       is bit j of qh[l]; w = (d * sc_j) * code - (dmin * m_j) */
#if QTYPE == 12
#define QB_BYTES 144
#define KQ_QS 16
#else
#define QB_BYTES 176
#define KQ_QS 48
#endif
#define QB_HAS_MIN 1
#define QB_SUB16 0
/* ggml's get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 packed bytes */
DEVICE void k4_scale_min(GLOBAL const uchar* s, int j, int* sc, int* mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)(u >> 3) * QB_BYTES;
    int j = u & 7;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        uint v = (ld32_a4(b + KQ_QS + 32 * (j >> 1) + 4 * i) >> (4 * (j & 1))) & 0x0f0f0f0fu;
#if QTYPE == 13
        v |= ((ld32_a4(b + 16 + 4 * i) >> j) & 0x01010101u) << 4;
#endif
        q[i] = (int)v;
    }
    int sc, mn;
    k4_scale_min(b + 4, j, &sc, &mn);
    d[0] = d[1] = ld_f16(b) * (float)sc;
    m[0] = m[1] = -(ld_f16(b + 2) * (float)mn);
}

#elif QTYPE == 14
/* Q6_K: ql[128] | qh[64] | scales[16] int8 | d f16
 *       low 4 bits: nibble (k / 2) of ql[64h + 32 (k % 2) + l]; bits 4-5: (qh[32h + l] >> 2k) & 3;
 *       code = q6 - 32, sub-blocks of 16: w = (d * sc) * code */
#define QB_BYTES 210
#define QB_HAS_MIN 0
#define QB_SUB16 1
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)(u >> 3) * QB_BYTES;
    int j = u & 7, h = j >> 2, k = j & 3;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        uint lo = (ld32_a2(b + 64 * h + 32 * (k & 1) + 4 * i) >> (4 * (k >> 1))) & 0x0f0f0f0fu;
        uint hi = (ld32_a2(b + 128 + 32 * h + 4 * i) >> (2 * k)) & 0x03030303u;
        q[i] = sub_bytes(lo | (hi << 4), 0x20202020u);
    }
    float dd = ld_f16(b + 208);
    d[0] = dd * (float)(i8)b[192 + 2 * j];
    d[1] = dd * (float)(i8)b[192 + 2 * j + 1];
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 23
/* IQ4_XS: d f16 | scales_h u16 | scales_l[4] | qs[128]
 *       sub-block j: ls = (4 bits of scales_l[j / 2] | 2 bits of scales_h << 4) - 32,
 *       qs[16j + t] low nibble -> element t, high -> 16 + t; w = (d * ls) * KVALUES_IQ4NL[nibble] */
#define QB_BYTES 136
#define QB_HAS_MIN 0
#define QB_SUB16 0
#define IQ4NL_LO 0xf6eaddcfbfad9881ull   /* -127 -104 -83 -65 -49 -35 -22 -10 */
#define IQ4NL_HI 0x7159453526190d01ull   /*    1   13  25  38  53  69  89 113 */
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)(u >> 3) * QB_BYTES;
    int j = u & 7;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a4(b + 8 + 16 * j + 4 * i);
        q[i] = tab16_word(v & 0x0f0f0f0fu, IQ4NL_LO, IQ4NL_HI);
        q[4 + i] = tab16_word((v >> 4) & 0x0f0f0f0fu, IQ4NL_LO, IQ4NL_HI);
    }
    int ls = ((b[4 + (j >> 1)] >> (4 * (j & 1))) & 15) | (((int)(ld_u16(b + 2) >> (2 * j)) & 3) << 4);
    d[0] = d[1] = ld_f16(b) * (float)(ls - 32);
    m[0] = m[1] = 0.0f;
}
#endif
