/* quant_legacy.h: the 32-element block types, one unit = one block (included by quant_blocks.h).
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4. Layouts: quant/legacy.py, quant/nonlinear.py.
 *
 * 4-bit types share the nibble order: byte qs[j] holds element j (low nibble) and j + 16 (high
 * nibble), so word i of qs gives elements 4i..4i+3 from its low nibbles and 16+4i.. from its high. */

#if QTYPE == 2 || QTYPE == 3 || QTYPE == 6 || QTYPE == 7 || QTYPE == 8 || QTYPE == 20 || QTYPE == 39
#define QB_ELEMS 32
#define QB_SUB16 0
#define QB_VEC VEC_Q8_0
#endif

#if QTYPE == 2
/* Q4_0: d f16 | qs[16]                          w = d * (nibble - 8) */
#define QB_BYTES 18
#define QB_HAS_MIN 0
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a2(b + 2 + 4 * i);
        q[i] = sub_bytes(v & 0x0f0f0f0fu, 0x08080808u);
        q[4 + i] = sub_bytes((v >> 4) & 0x0f0f0f0fu, 0x08080808u);
    }
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 3
/* Q4_1: d f16 | m f16 | qs[16]                  w = d * nibble + m */
#define QB_BYTES 20
#define QB_HAS_MIN 1
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a4(b + 4 + 4 * i);
        q[i] = (int)(v & 0x0f0f0f0fu);
        q[4 + i] = (int)((v >> 4) & 0x0f0f0f0fu);
    }
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = ld_f16(b + 2);
}

#elif QTYPE == 6
/* Q5_0: d f16 | qh u32 (bit j = bit 4 of element j) | qs[16]      w = d * (q5 - 16) */
#define QB_BYTES 22
#define QB_HAS_MIN 0
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
    uint qh = ld32_a2(b + 2);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a2(b + 6 + 4 * i);
        q[i] = sub_bytes((v & 0x0f0f0f0fu) | spread4((qh >> (4 * i)) & 15u, 4), 0x10101010u);
        q[4 + i] = sub_bytes(((v >> 4) & 0x0f0f0f0fu) | spread4((qh >> (16 + 4 * i)) & 15u, 4), 0x10101010u);
    }
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 7
/* Q5_1: d f16 | m f16 | qh u32 | qs[16]         w = d * q5 + m */
#define QB_BYTES 24
#define QB_HAS_MIN 1
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
    uint qh = ld32_a4(b + 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a4(b + 8 + 4 * i);
        q[i] = (int)((v & 0x0f0f0f0fu) | spread4((qh >> (4 * i)) & 15u, 4));
        q[4 + i] = (int)(((v >> 4) & 0x0f0f0f0fu) | spread4((qh >> (16 + 4 * i)) & 15u, 4));
    }
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = ld_f16(b + 2);
}

#elif QTYPE == 8
/* Q8_0: d f16 | qs[32] int8                     w = d * q */
#define QB_BYTES 34
#define QB_HAS_MIN 0
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = (int)ld32_a2(b + 2 + 4 * i);
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 20
/* IQ4_NL: d f16 | qs[16]                        w = d * KVALUES_IQ4NL[nibble] */
#define QB_BYTES 18
#define QB_HAS_MIN 0
#define IQ4NL_LO 0xf6eaddcfbfad9881ull   /* -127 -104 -83 -65 -49 -35 -22 -10 */
#define IQ4NL_HI 0x7159453526190d01ull   /*    1   13  25  38  53  69  89 113 */
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld32_a2(b + 2 + 4 * i);
        q[i] = tab16_word(v & 0x0f0f0f0fu, IQ4NL_LO, IQ4NL_HI);
        q[4 + i] = tab16_word((v >> 4) & 0x0f0f0f0fu, IQ4NL_LO, IQ4NL_HI);
    }
    d[0] = d[1] = ld_f16(b);
    m[0] = m[1] = 0.0f;
}

#elif QTYPE == 39
/* MXFP4: e u8 (E8M0) | qs[16]                   w = KVALUES_MXFP4[nibble] * 2^(e - 128) */
#define QB_BYTES 17
#define QB_HAS_MIN 0
#define MXFP4_LO 0x0c08060403020100ull   /* 0  1  2  3  4  6  8  12 */
#define MXFP4_HI 0xf4f8fafcfdfeff00ull   /* 0 -1 -2 -3 -4 -6 -8 -12 */
/* ggml_e8m0_to_fp32_half: 2^(e - 128) from bits (subnormal for e < 2) */
DEVICE float e8m0_half(uint e) { return AS_FLOAT(e < 2u ? (0x00200000u << e) : ((e - 1u) << 23)); }
DEVICE void unit_decode(GLOBAL const uchar* row, int u, int* q, float* d, float* m) {
    GLOBAL const uchar* b = row + (u64)u * QB_BYTES;   /* 17-byte blocks: byte loads */
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        uint v = ld_u32(b + 1 + 4 * i);
        q[i] = tab16_word(v & 0x0f0f0f0fu, MXFP4_LO, MXFP4_HI);
        q[4 + i] = tab16_word((v >> 4) & 0x0f0f0f0fu, MXFP4_LO, MXFP4_HI);
    }
    d[0] = d[1] = e8m0_half((uint)b[0]);
    m[0] = m[1] = 0.0f;
}
#endif
