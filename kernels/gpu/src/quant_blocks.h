/* quant_blocks.h: GGML weight blocks read directly on the device, one weight type per build.
 *
 * The products family is compiled once per weight type with -DQTYPE=<ggml type id> (2 = Q4_0,
 * 12 = Q4_K, ...), so a kernel holds the decoder of exactly one type and the compiler sees
 * constants everywhere. Weights stay in their GGUF storage layout (rows of `row_bytes`, blocks
 * byte-packed as ggml-common.h has them; see quant/legacy.py, kquants.py, nonlinear.py for the
 * bit diagrams): nothing is repacked at upload.
 *
 * Every block type is read in *units* of 32 consecutive elements of a row (a legacy block, or one
 * eighth of a 256-element super-block):
 *
 *     unit_decode(row, u, q[8], d[2], m[2])
 *         q:  the 32 elements' integer codes, int8, packed four to an int (element 4i + b in byte b
 *             of q[i], lowest byte first), offsets already applied (Q4_0: nibble - 8, Q6_K: q - 32,
 *             IQ4_NL, IQ4_XS, MXFP4: the int8 codebook value)
 *         d:  the scale of elements 0..15 (d[0]) and 16..31 (d[1]), equal unless the type has
 *             16-element sub-blocks (Q2_K, Q3_K, Q6_K: QB_SUB16)
 *         m:  the same for the additive min, when the type has one (QB_HAS_MIN: Q4_1, Q5_1, Q2_K,
 *             Q4_K, Q5_K); K-quant mins are stored negated, so w = d * q + m always
 *
 * so that w = MUL_RN(d, (float)q) + m is bit-exactly ggml's dequantized value (each factor is
 * computed with ggml's operations in ggml's order: K-quant `dl = d * sc` first, then `dl * q - ml`,
 * with no fused multiply-add). The float path, the integer (DP4A) path, the tiled matmul and the
 * embedding lookup all decode through this one function.
 *
 * The float types (F32, F16, BF16; QB_FLOAT) have no units: kernels read elements with w_elem().
 *
 * Per type this header defines:
 *   QB_ELEMS, QB_BYTES   elements and bytes per block
 *   QB_FLOAT             1 for F32/F16/BF16
 *   QB_HAS_MIN, QB_SUB16 see above
 *   QB_VEC               how llama.cpp rounds the activations (quant/activations.py):
 *                        VEC_NONE (F32), VEC_F16, VEC_BF16, VEC_Q8_0 (blocks of 32; also Q8_1,
 *                        whose values are the same), VEC_Q8_K (blocks of 256)
 * Word loads assume a little-endian device (every GPU and CPU OpenCL target in use).
 */
#ifndef GGUFPY_QUANT_BLOCKS_H
#define GGUFPY_QUANT_BLOCKS_H

#ifndef QTYPE
#error "the products family is built per weight type: -DQTYPE=<ggml type id>"
#endif

#define VEC_NONE 0
#define VEC_F16 1
#define VEC_BF16 2
#define VEC_Q8_0 3
#define VEC_Q8_K 4

/* ---------------------------------------------------------------- dialect helpers */
#ifdef __OPENCL_VERSION__
/* the dequantized value d * q + m must be two roundings (ggml's and NumPy's), never one fma */
#pragma OPENCL FP_CONTRACT OFF
#define MUL_RN(a, b) ((a) * (b))
#define MADF(a, b, c) mad(a, b, c)
#define FMA_EXACT(a, b, c) fma(a, b, c)
#else
#define MUL_RN(a, b) __fmul_rn(a, b)
#define MADF(a, b, c) ((a) * (b) + (c))
#define FMA_EXACT(a, b, c) fmaf(a, b, c)
#endif

/* a / b correctly rounded whatever the device's division does (OpenCL allows 2.5 ulp without
 * -cl-fp32-correctly-rounded-divide-sqrt): of the quotient and its two neighbours, the one whose
 * exact remainder (fma) is smallest. Used per activation block, where one ulp changes a code. */
DEVICE float div_rn(float a, float b) {
    float q = a / b;
    if (!(FABSF(q) < INFINITY) || q == 0.0f) return q;
    uint u = AS_UINT(q);
    float lo = AS_FLOAT(u - 1u), hi = AS_FLOAT(u + 1u);
    float rq = FABSF(FMA_EXACT(-q, b, a)), rl = FABSF(FMA_EXACT(-lo, b, a)), rh = FABSF(FMA_EXACT(-hi, b, a));
    if (rl < rq) return lo;
    if (rh < rq) return hi;
    return q;
}

/* 32-bit little-endian words of block data, by the alignment the block layout guarantees */
DEVICE uint ld32_a4(GLOBAL const uchar* p) { return *(GLOBAL const uint*)p; }
DEVICE uint ld32_a2(GLOBAL const uchar* p) {
    GLOBAL const ushort* s = (GLOBAL const ushort*)p;
    return (uint)s[0] | ((uint)s[1] << 16);
}

/* per byte: v - c for bytes 0..127 and c <= 128, without borrows between bytes (c4 = c * 0x01010101) */
DEVICE int sub_bytes(uint v, uint c4) { return (int)(((v | 0x80808080u) - c4) ^ 0x80808080u); }

/* a 16-entry int8 table held in two 64-bit constants (entries 0..7 in `lo`, lowest byte first):
 * the four nibbles in the low halves of v's bytes, looked up, packed back */
DEVICE uint tab16(u64 lo, u64 hi, uint n) { return (uint)(((n < 8u ? lo : hi) >> (8u * (n & 7u))) & 0xffu); }
DEVICE int tab16_word(uint v, u64 lo, u64 hi) {
    return (int)(tab16(lo, hi, v & 15u) | (tab16(lo, hi, (v >> 8) & 15u) << 8) | (tab16(lo, hi, (v >> 16) & 15u) << 16)
                 | (tab16(lo, hi, (v >> 24) & 15u) << 24));
}

/* bit b of each of the four bytes of a nibble h (bits 0..3) moved to bit `to` of byte b */
DEVICE uint spread4(uint h, int to) {
    return ((h & 1u) << to) | ((h & 2u) << (to + 7)) | ((h & 4u) << (to + 14)) | ((h & 8u) << (to + 21));
}

DEVICE int code_at(int word, int b) { return (int)(i8)((word >> (8 * b)) & 0xff); }

/* ---------------------------------------------------------------- the types */
#if QTYPE == 0 || QTYPE == 1 || QTYPE == 30
/* F32 (0), F16 (1), BF16 (30): plain elements */
#define QB_FLOAT 1
#define QB_ELEMS 1
#define QB_HAS_MIN 0
#define QB_SUB16 0
#if QTYPE == 0
#define QB_BYTES 4
#define QB_VEC VEC_NONE
DEVICE float w_elem(GLOBAL const uchar* row, int k) { return ((GLOBAL const float*)row)[k]; }
#elif QTYPE == 1
#define QB_BYTES 2
#define QB_VEC VEC_F16
DEVICE float w_elem(GLOBAL const uchar* row, int k) { return f16_to_f32(((GLOBAL const ushort*)row)[k]); }
#else
#define QB_BYTES 2
#define QB_VEC VEC_BF16
DEVICE float w_elem(GLOBAL const uchar* row, int k) { return bf16_to_f32(((GLOBAL const ushort*)row)[k]); }
#endif
#else
#define QB_FLOAT 0
#include "quant_legacy.h"
#include "quant_kquants.h"
#ifndef QB_BYTES
#error "QTYPE names a GGML type the products kernels do not decode"
#endif
#endif

/* ---------------------------------------------------------------- dots of one unit */
#if !QB_FLOAT
/* the exact dequantized value of code c under scale d and min m */
DEVICE float unit_value(int c, float d, float m) {
#if QB_HAS_MIN
    return MUL_RN(d, (float)c) + m;
#else
    return MUL_RN(d, (float)c);
#endif
}

/* float path: sum over the unit of w * x, x 32 floats */
DEVICE float unit_dot_f(const int* q, const float* d, const float* m, GLOBAL const float* x) {
    float s0 = 0.0f, s1 = 0.0f;
#if QB_HAS_MIN
    float x0 = 0.0f, x1 = 0.0f;
#endif
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            float xa = x[4 * i + b], xb = x[16 + 4 * i + b];
            s0 = MADF((float)code_at(q[i], b), xa, s0);
            s1 = MADF((float)code_at(q[4 + i], b), xb, s1);
#if QB_HAS_MIN
            x0 += xa;
            x1 += xb;
#endif
        }
    }
#if QB_SUB16
    float r = d[0] * s0 + d[1] * s1;
#else
    float r = d[0] * (s0 + s1);
#endif
#if QB_HAS_MIN
#if QB_SUB16
    r += m[0] * x0 + m[1] * x1;
#else
    r += m[0] * (x0 + x1);
#endif
#endif
    return r;
}

/* integer path: sum over the unit of w * (dx * qx), qx 32 int8 codes packed in 8 ints */
DEVICE float unit_dot_q(const int* q, const float* d, const float* m, GLOBAL const int* xq, float dx) {
    int s0 = 0, s1 = 0;
    int xw[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) xw[i] = xq[i];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        s0 = DP4A(q[i], xw[i], s0);
        s1 = DP4A(q[4 + i], xw[4 + i], s1);
    }
#if QB_SUB16
    float r = d[0] * (float)s0 + d[1] * (float)s1;
#else
    float r = d[0] * (float)(s0 + s1);
#endif
#if QB_HAS_MIN
    int z0 = 0, z1 = 0;    /* sums of the activation codes, for the min term */
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        z0 = DP4A(0x01010101, xw[i], z0);
        z1 = DP4A(0x01010101, xw[4 + i], z1);
    }
#if QB_SUB16
    r += m[0] * (float)z0 + m[1] * (float)z1;
#else
    r += m[0] * (float)(z0 + z1);
#endif
#endif
    return r * dx;
}
#endif

#endif /* GGUFPY_QUANT_BLOCKS_H */
