/* products.cl: quantized products y = x @ W.T, expert-indexed products and embedding rows, read
 * straight from GGML blocks. Built once per weight type (-DQTYPE=<ggml id>, quant_blocks.h).
 *
 * Kernels (every one exists in every build; those that do not apply to a type have empty bodies):
 *   x_quant   activations rounded as llama.cpp rounds them (Q8_0/Q8_1 blocks of 32, Q8_K blocks of
 *             256; quant/activations.py): int8 codes + one float scale per block for the integer
 *             path, and/or the rounded values d * q as floats for the float path
 *   x_half    activations rounded to f16 / bf16 (F16 / BF16 weights)
 *   mv_f      matrix-vector products, float path: up to MV_MAXT tokens per weight read (decode)
 *   mv_q      matrix-vector products, integer path: weight codes . activation codes with DP4A,
 *             scaled per (sub-)block, as llama.cpp's mmvq does
 *   mm_f      tiled matrix-matrix product (prompts): a work-group computes MM_TM rows x MM_TN tokens,
 *             decoding each weight unit once per tile into shared memory
 *   moe_group groups (token, slot) pairs by expert on the device, for mm_f over experts
 *   get_rows  embedding rows, dequantized bit-exactly as quant/ does
 *
 * Experts: mv_f / mv_q / mm_f take `n_expert` > 0 to read the expert id of each (token, slot) pair
 * from device memory (`ids`), so a MoE decode step needs no host round trip. */
#include "quant_blocks.h"

#ifndef MV_WG
#define MV_WG 64            /* matrix-vector work-group */
#endif
#ifndef MV_TPR
#define MV_TPR 32           /* threads per row */
#endif
#define MV_RPW (MV_WG / MV_TPR)
#define MV_MAXT 8           /* tokens per launch of the matrix-vector kernels */

#ifndef MM_TM
#define MM_TM 64            /* tiled product: rows per tile */
#endif
#define MM_TN 32            /* tokens per tile */
#define MM_TK 64            /* elements of the inner dimension per step (two units) */
#define MM_WG 128           /* 16 row groups x 8 token groups, 4 x 4 outputs per thread */
#define MM_SW (MM_TM + 1)   /* padded strides of the shared tiles */
#define MM_SX (MM_TN + 1)

#define XQ_WG 64            /* x_quant work-group: 64 chunks of 32 (8 Q8_K blocks) */
#define MOE_WG 256
#define MOE_MAX_EXPERT 512

DEVICE float qnan(void) { return AS_FLOAT(0x7fc00000u); }

/* ================================================================ activations */

/* chunk c = elements 32c..32c+31 of x (rows of a multiple of 32, or of 256 for Q8_K).
 * Q8_0 / Q8_1: d = f16(amax / 127), q = rint(x * (127 / amax)).
 * Q8_K: over the 256-block, m = the signed value of the first largest |x|, iscale = -127 / m,
 *       q = min(127, rint(iscale * x)), d = 1 / iscale.
 * Writes codes (xq, 8 ints a chunk) and scales (xd, one per block) when want_codes, rounded values
 * d * q (xr) when want_float. */
KERNEL void x_quant(GLOBAL const float* x, GLOBAL float* xr, GLOBAL int* xq, GLOBAL float* xd, int n_chunks,
                    int want_float, int want_codes) {
#if QB_VEC == VEC_Q8_0 || QB_VEC == VEC_Q8_K
    int c = GID(0);
    int ok = c < n_chunks;
    GLOBAL const float* xc = x + (u64)(ok ? c : 0) * 32;
    float amax = 0.0f;
#if QB_VEC == VEC_Q8_0
    for (int i = 0; i < 32; ++i) amax = FMAXF(amax, FABSF(xc[i]));
    float d = round_f16(div_rn(amax, 127.0f));
    float inv = amax > 0.0f ? div_rn(127.0f, amax) : 0.0f;
    if (!ok) return;
    if (want_codes) xd[c] = d;
#else
    float smax = 0.0f;                    /* the signed value of the first largest |x| */
    for (int i = 0; i < 32; ++i) {
        float a = FABSF(xc[i]);
        if (a > amax) { amax = a; smax = xc[i]; }
    }
    SHARED float s_amax[XQ_WG], s_smax[XQ_WG];
    int lid = LID(0);
    s_amax[lid] = amax;
    s_smax[lid] = smax;
    BARRIER;
    int g = lid & ~7;                     /* first chunk of this thread's 256-block */
    amax = 0.0f;
    smax = 0.0f;
    for (int i = 0; i < 8; ++i)
        if (s_amax[g + i] > amax) { amax = s_amax[g + i]; smax = s_smax[g + i]; }
    float inv = smax != 0.0f ? div_rn(-127.0f, smax) : 0.0f;   /* iscale */
    float d = smax != 0.0f ? div_rn(1.0f, inv) : 0.0f;
    if (!ok) return;
    if (want_codes && (c & 7) == 0) xd[c >> 3] = d;
#endif
    for (int i = 0; i < 8; ++i) {
        int qq[4];
        for (int b = 0; b < 4; ++b) {
            float q = RINTF(xc[4 * i + b] * inv);
#if QB_VEC == VEC_Q8_K
            q = FMINF(q, 127.0f);
#endif
            qq[b] = (int)q;
            if (want_float) xr[(u64)c * 32 + 4 * i + b] = d * q;
        }
        if (want_codes) xq[(u64)c * 8 + i] = pack4(qq[0], qq[1], qq[2], qq[3]);
    }
#endif
}

/* x rounded to the weight's half type, element by element (F16, BF16 weights) */
KERNEL void x_half(GLOBAL const float* x, GLOBAL float* xr, int n) {
#if QB_VEC == VEC_F16 || QB_VEC == VEC_BF16
    int i = GID(0);
    if (i >= n) return;
#if QB_VEC == VEC_F16
    xr[i] = round_f16(x[i]);
#else
    xr[i] = round_bf16(x[i]);
#endif
#endif
}

/* ================================================================ matrix-vector (decode) */

/* One work-group: MV_RPW rows x MV_TPR threads per row; each thread walks units u = lane,
 * lane + MV_TPR, ... of its row and dots each decoded unit with up to n_tok tokens; partial sums
 * meet in shared memory. Grid: (row groups, pairs): plain products have one "pair" holding all
 * n_tok tokens; expert products one pair per (token, slot), each n_tok = 1. */
DEVICE void mv_run(int use_codes, GLOBAL const float* x, GLOBAL const int* xq, GLOBAL const float* xd,
                   GLOBAL const uchar* w, GLOBAL const float* bias, GLOBAL float* y, int n_in, int n_out,
                   int row_bytes, int n_tok, int has_bias, GLOBAL const int* ids, int n_used, int x_shared,
                   int n_expert, int expert_bytes, LPTR float* part) {
    int lid = LID(0), lane = lid % MV_TPR;
    int row = GRP(0) * MV_RPW + lid / MV_TPR;
    int e = 0, xrow = 0, yrow = 0, valid = 1;
    if (n_expert > 0) {
        int p = GRP(1);
        e = ids[p];
        valid = e >= 0 && e < n_expert;
        xrow = x_shared ? p / n_used : p;
        yrow = p;
    }
    float acc[MV_MAXT];
#pragma unroll
    for (int t = 0; t < MV_MAXT; ++t) acc[t] = 0.0f;
    if (valid && row < n_out) {
        GLOBAL const uchar* wr = w + (u64)e * (u64)expert_bytes + (u64)row * (u64)row_bytes;
#if QB_FLOAT
        GLOBAL const float* xb = x + (u64)xrow * n_in;
        for (int k = lane; k < n_in; k += MV_TPR) {
            float wv = w_elem(wr, k);
#pragma unroll
            for (int t = 0; t < MV_MAXT; ++t)
                if (t < n_tok) acc[t] = MADF(wv, xb[(u64)t * n_in + k], acc[t]);
        }
#else
        int n_units = n_in / 32;
        for (int u = lane; u < n_units; u += MV_TPR) {
            int q[8];
            float d[2], m[2];
            unit_decode(wr, u, q, d, m);
#pragma unroll
            for (int t = 0; t < MV_MAXT; ++t) {
                if (t >= n_tok) continue;
                u64 xo = (u64)(xrow + t) * n_in + (u64)u * 32;
                if (use_codes) {
#if QB_VEC == VEC_Q8_K
                    float dx = xd[((u64)(xrow + t) * n_in + (u64)u * 32) / 256];
#else
                    float dx = xd[xo / 32];
#endif
                    acc[t] += unit_dot_q(q, d, m, xq + xo / 4, dx);
                } else {
                    acc[t] += unit_dot_f(q, d, m, x + xo);
                }
            }
        }
#endif
    }
#pragma unroll
    for (int t = 0; t < MV_MAXT; ++t) part[t * MV_WG + lid] = acc[t];
    BARRIER;
    if (lid < MV_RPW * n_tok) {
        int r = lid / n_tok, t = lid % n_tok;
        int orow = GRP(0) * MV_RPW + r;
        if (orow < n_out) {
            float s = 0.0f;
            for (int i = 0; i < MV_TPR; ++i) s += part[t * MV_WG + r * MV_TPR + i];
            if (has_bias && valid) s += bias[(u64)e * n_out + orow];
            y[(u64)(yrow + t) * n_out + orow] = valid ? s : qnan();
        }
    }
}

/* float path: x holds floats (rounded as llama.cpp rounds, or exact in "f32" mode) */
KERNEL void mv_f(GLOBAL const float* x, GLOBAL const uchar* w, GLOBAL const float* bias, GLOBAL float* y, int n_in,
                 int n_out, int row_bytes, int n_tok, int has_bias, GLOBAL const int* ids, int n_used, int x_shared,
                 int n_expert, int expert_bytes) {
    SHARED float part[MV_MAXT * MV_WG];
    mv_run(0, x, (GLOBAL const int*)x, x, w, bias, y, n_in, n_out, row_bytes, n_tok, has_bias, ids, n_used,
           x_shared, n_expert, expert_bytes, part);
}

/* integer path: xq int8 codes (4 to an int) and xd scales from x_quant */
KERNEL void mv_q(GLOBAL const int* xq, GLOBAL const float* xd, GLOBAL const uchar* w, GLOBAL const float* bias,
                 GLOBAL float* y, int n_in, int n_out, int row_bytes, int n_tok, int has_bias, GLOBAL const int* ids,
                 int n_used, int x_shared, int n_expert, int expert_bytes) {
#if !QB_FLOAT
    SHARED float part[MV_MAXT * MV_WG];
    mv_run(1, xd, xq, xd, w, bias, y, n_in, n_out, row_bytes, n_tok, has_bias, ids, n_used, x_shared, n_expert,
           expert_bytes, part);
#endif
}

/* ================================================================ matrix-matrix (prompts) */

/* Tile (GRP(0): MM_TM rows) x (GRP(1): MM_TN tokens). Plain products: tokens tile*MM_TN...;
 * experts: the tile table of moe_group gives (expert, first entry in `order`, count), and `order`
 * the (token, slot) pairs, so every tile multiplies one expert's weights by its tokens. Per
 * MM_TK step the work-group decodes MM_TM x 2 units into sW (one unit a thread, exact values) and
 * loads the x tile into sX; each thread then accumulates a 4 x 4 block of outputs. */
KERNEL void mm_f(GLOBAL const float* x, GLOBAL const uchar* w, GLOBAL const float* bias, GLOBAL float* y, int n_in,
                 int n_out, int row_bytes, int n_tok, int has_bias, GLOBAL const int* order, GLOBAL const int* tiles,
                 int n_used, int x_shared, int n_expert, int expert_bytes) {
    SHARED float sW[MM_TK * MM_SW];
    SHARED float sX[MM_TK * MM_SX];
    SHARED int sxrow[MM_TN], syrow[MM_TN];
    int lid = LID(0);
    int r0 = GRP(0) * MM_TM;
    int tile = GRP(1);
    int e = 0, p0, nt;
    if (n_expert > 0) {
        e = tiles[3 * tile];
        if (e < 0) return;                        /* past the last tile: the whole group leaves */
        p0 = tiles[3 * tile + 1];
        nt = tiles[3 * tile + 2];
    } else {
        p0 = tile * MM_TN;
        nt = n_tok - p0 < MM_TN ? n_tok - p0 : MM_TN;
    }
    if (lid < MM_TN) {
        int p = -1;
        if (lid < nt) p = n_expert > 0 ? order[p0 + lid] : p0 + lid;
        syrow[lid] = p;
        sxrow[lid] = p < 0 ? -1 : (n_expert > 0 && x_shared ? p / n_used : p);
    }
    BARRIER;
    GLOBAL const uchar* we = w + (u64)e * (u64)expert_bytes;
    int rg = lid % 16, tg = lid / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < n_in; k0 += MM_TK) {
#if QB_FLOAT
        for (int i = lid; i < MM_TM * MM_TK; i += MM_WG) {
            int r = i / MM_TK, kk = i % MM_TK, row = r0 + r, k = k0 + kk;
            sW[kk * MM_SW + r] = (row < n_out && k < n_in) ? w_elem(we + (u64)row * (u64)row_bytes, k) : 0.0f;
        }
#else
        {
            int r = lid % MM_TM, uu = lid / MM_TM, row = r0 + r, u = k0 / 32 + uu;
            LPTR float* dst = sW + uu * 32 * MM_SW + r;
            if (row < n_out && u < n_in / 32) {
                int q[8];
                float d[2], m[2];
                unit_decode(we + (u64)row * (u64)row_bytes, u, q, d, m);
#pragma unroll
                for (int i = 0; i < 8; ++i)
#pragma unroll
                    for (int b = 0; b < 4; ++b)
                        dst[(4 * i + b) * MM_SW] = unit_value(code_at(q[i], b), d[i >> 2], m[i >> 2]);
            } else {
                for (int i = 0; i < 32; ++i) dst[i * MM_SW] = 0.0f;
            }
        }
#endif
        for (int i = lid; i < MM_TN * MM_TK; i += MM_WG) {
            int s = i / MM_TK, kk = i % MM_TK, k = k0 + kk, xr = sxrow[s];
            sX[kk * MM_SX + s] = (xr >= 0 && k < n_in) ? x[(u64)xr * n_in + k] : 0.0f;
        }
        BARRIER;
        for (int kk = 0; kk < MM_TK; ++kk) {
            float a[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = sW[kk * MM_SW + rg + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = sX[kk * MM_SX + tg + 8 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = MADF(a[i], bv[j], acc[i][j]);
        }
        BARRIER;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int row = r0 + rg + 16 * i;
        if (row >= n_out) continue;
        float bb = has_bias ? bias[(u64)e * n_out + row] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int s = tg + 8 * j;
            if (s < nt) y[(u64)syrow[s] * n_out + row] = acc[i][j] + bb;
        }
    }
}

/* ================================================================ experts: grouping on the device */

/* One work-group. For the n_pairs (token, slot) pairs with expert ids[p]: `order` lists the pairs
 * expert by expert (stable), `tiles` (max_tiles x 3 ints) one entry per MM_TN pairs of an expert:
 * (expert, first index into order, count), then -1 for unused entries. Pairs with an id outside
 * 0..n_expert-1 are in no tile: their output rows y[p] are set to NaN here. */
KERNEL void moe_group(GLOBAL const int* ids, GLOBAL int* order, GLOBAL int* tiles, GLOBAL float* y, int n_pairs,
                      int n_expert, int max_tiles, int n_out) {
    SHARED int cnt[MOE_MAX_EXPERT], start[MOE_MAX_EXPERT], tstart[MOE_MAX_EXPERT + 1];
    int lid = LID(0);
    for (int e = lid; e < n_expert; e += MOE_WG) {
        int c = 0;
        for (int p = 0; p < n_pairs; ++p) c += ids[p] == e;
        cnt[e] = c;
    }
    BARRIER;
    if (lid == 0) {
        int s = 0, ts = 0;
        for (int e = 0; e < n_expert; ++e) {
            start[e] = s;
            tstart[e] = ts;
            s += cnt[e];
            ts += (cnt[e] + MM_TN - 1) / MM_TN;
        }
        tstart[n_expert] = ts;
    }
    BARRIER;
    for (int e = lid; e < n_expert; e += MOE_WG) {
        int k = start[e];
        for (int p = 0; p < n_pairs; ++p)
            if (ids[p] == e) order[k++] = p;
        for (int i = 0; i * MM_TN < cnt[e]; ++i) {
            int t = tstart[e] + i;
            tiles[3 * t] = e;
            tiles[3 * t + 1] = start[e] + i * MM_TN;
            tiles[3 * t + 2] = cnt[e] - i * MM_TN < MM_TN ? cnt[e] - i * MM_TN : MM_TN;
        }
    }
    for (int t = tstart[n_expert] + lid; t < max_tiles; t += MOE_WG) tiles[3 * t] = -1;
    for (int p = lid; p < n_pairs; p += MOE_WG) {
        int e = ids[p];
        if (e < 0 || e >= n_expert)
            for (int c = 0; c < n_out; ++c) y[(u64)p * n_out + c] = qnan();
    }
}

/* ================================================================ embedding rows */

/* one row's unit (element for float types) i: dequantized as quant/ does */
DEVICE void get_row(GLOBAL const uchar* w, int id, GLOBAL float* yr, int n_rows, int n_in, int row_bytes, int i) {
    if (id < 0) id += n_rows;
    int bad = id < 0 || id >= n_rows;
    GLOBAL const uchar* wr = w + (u64)(bad ? 0 : id) * (u64)row_bytes;
#if QB_FLOAT
    if (i >= n_in) return;
    yr[i] = bad ? qnan() : w_elem(wr, i);
#else
    if (i >= n_in / 32) return;
    int q[8];
    float d[2], m[2];
    unit_decode(wr, i, q, d, m);
#pragma unroll
    for (int k = 0; k < 8; ++k)
#pragma unroll
        for (int b = 0; b < 4; ++b)
            yr[(u64)i * 32 + 4 * k + b] = bad ? qnan() : unit_value(code_at(q[k], b), d[k >> 2], m[k >> 2]);
#endif
}

/* y[r] = dequantized row ids[r] of w (n_rows x n_in). Grid: (units, or elements for float types;
 * up to 65535 groups of ids, each looping over every NGRP(1)-th id). A negative id counts from the
 * end, as NumPy indexing does; an id out of range gives NaN. */
KERNEL void get_rows(GLOBAL const uchar* w, GLOBAL const int* ids, GLOBAL float* y, int n_rows, int n_in,
                     int row_bytes, int n_ids) {
    for (int r = GRP(1); r < n_ids; r += NGRP(1))
        get_row(w, ids[r], y + (u64)r * n_in, n_rows, n_in, row_bytes, GID(0));
}
