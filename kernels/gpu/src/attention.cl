/* attention.cl: KV cache writes and attention (causal, sliding window, sinks, GQA) on the device.
 *
 * Semantics: kernels/ops_numpy.py (NumpyOps.attention). Key row j of a cache holds position j; a
 * query at position p sees the rows j with j <= p, j < n_kv and, with a window, p - j < window.
 * The design (why two kernels, why two passes in llama.cpp mode) is in kernels/gpu/attention.py.
 *
 * Every kernel comes in the cache's two storages: `is_f16` = 1 reads f16 K/V (ushort) and does what
 * ggml does without flash attention (f16 Q, probabilities normalised then rounded to f16); 0 reads
 * f32 K/V and merges partial softmaxes online. Launch sizes depend only on n_tok and the cache's
 * capacity; positions come from device memory and bound the loops, so one launch sequence is right
 * at every position (what a CUDA graph replays). */

#define ATT_WG 128       /* work-group size of the split and tiled kernels */
#define ATT_CH 128       /* kv rows per chunk in the split kernels (one thread per row: == ATT_WG) */
#define ATT_HG 8         /* most query heads (sharing one kv head) per split work-group */
#define ATT_KS 32        /* columns of K per staged slice in the split kernels */
#define ATT_DMAX 256     /* largest head dimension */
#define ATT_COLS 2       /* output columns per thread in the split kernels: ATT_DMAX / ATT_WG */
#define ATT_QBUF 3072    /* tiled kernel: floats of the query block (rows x dk) */
#define ATT_KVBUF 3072   /* tiled kernel: floats of a K tile (dk x (keys + 1)) or V tile (keys x dv) */
#define ATT_SBUF 2048    /* tiled kernel: floats of the score tile (rows x keys) */
#define ATT_OBUF 3072    /* tiled kernel: floats of the output accumulators (rows x dv) */
#define ATT_ROWS 64      /* tiled kernel: most query rows (tokens x heads) per work-group */
#define ATT_MWG 64       /* work-group size of the merge kernel */

/* the big bodies below are specialised by inlining them into one kernel per storage */
#ifdef __OPENCL_VERSION__
#define ATT_INLINE static inline __attribute__((always_inline))
#else
#define ATT_INLINE DEVICE
#endif

ATT_INLINE int att_min(int a, int b) { return a < b ? a : b; }
ATT_INLINE int att_max(int a, int b) { return a > b ? a : b; }

/* element i of a K or V cache, f16 (half) or f32 storage */
ATT_INLINE float kv_ld(GLOBAL const uchar* base, u64 i, const int is_f16) {
    return is_f16 ? f16_to_f32(((GLOBAL const ushort*)base)[i]) : ((GLOBAL const float*)base)[i];
}

/* the visible key rows [lo, hi) of a query at position p (empty when hi <= lo) */
ATT_INLINE int vis_lo(int p, int window) { return window > 0 ? att_max(0, p - window + 1) : 0; }
ATT_INLINE int vis_hi(int p, int n_kv) { return att_min(n_kv, p + 1); }

/* ------------------------------------------------------------------------------ KV cache writes */

/* cache row pos[t] (t itself when has_pos is 0) = x[t], for x (n_tok, row) f32; rows outside the
 * cache are skipped (a device-side position cannot raise). Thread (e, t): element e of token t. */
ATT_INLINE void kv_store_body(GLOBAL const float* x, GLOBAL const int* pos, GLOBAL uchar* cache, int row, int n_ctx,
                              int has_pos, const int is_f16) {
    int e = GID(0), t = GID(1);
    int p = has_pos ? pos[t] : t;
    if (e >= row || p < 0 || p >= n_ctx) return;
    float v = x[(u64)t * row + e];
    u64 i = (u64)p * row + e;
    if (is_f16)
        ((GLOBAL ushort*)cache)[i] = f32_to_f16(v);
    else
        ((GLOBAL float*)cache)[i] = v;
}

KERNEL void kv_store_f16(GLOBAL const float* x, GLOBAL const int* pos, GLOBAL uchar* cache, int row, int n_ctx,
                         int has_pos) {
    kv_store_body(x, pos, cache, row, n_ctx, has_pos, 1);
}

KERNEL void kv_store_f32(GLOBAL const float* x, GLOBAL const int* pos, GLOBAL uchar* cache, int row, int n_ctx,
                         int has_pos) {
    kv_store_body(x, pos, cache, row, n_ctx, has_pos, 0);
}

/* ------------------------------------------------------------------------------ split-KV (decode) */

/* Work-group (chunk c, head group, token t) of the split kernels: the hg query heads h0.. of kv
 * head g against kv rows [j0, j0 + ATT_CH) of which [ja, jb) are visible. Returns 0 when no row of
 * the chunk is visible (the whole work-group then exits: launches cover the cache's capacity). */
ATT_INLINE int split_setup(GLOBAL const int* qpos, int n_head, int n_head_kv, int n_kv, int hg_max, int n_hsub,
                           int window, int* t, int* g, int* h0, int* hg, int* j0, int* ja, int* jb) {
    int gs = GRP(1);
    int group = n_head / n_head_kv;
    *t = GRP(2);
    *g = gs / n_hsub;
    int hs = gs - *g * n_hsub;
    *h0 = *g * group + hs * hg_max;
    *hg = att_min(hg_max, group - hs * hg_max);
    int p = qpos[*t];
    *j0 = GRP(0) * ATT_CH;
    *ja = att_max(*j0, vis_lo(p, window));
    *jb = att_min(*j0 + ATT_CH, vis_hi(p, n_kv));
    return *ja < *jb;
}

/* the hg query rows (rounded to f16 in llama.cpp mode) into sq[r * dk + i] */
ATT_INLINE void load_q(GLOBAL const float* q, LPTR float* sq, int t, int n_head, int h0, int hg, int dk,
                       const int is_f16) {
    GLOBAL const float* qr = q + ((u64)t * n_head + h0) * dk;
    for (int e = LID(0); e < hg * dk; e += ATT_WG) sq[e] = is_f16 ? round_f16(qr[e]) : qr[e];
}

/* Work-group reduction of red[r * ATT_WG + i] over i < ATT_WG, for every head r < hg (max or
 * sum), into dst[r]: 16 threads per head reduce 8 values each, then one thread per head the 16.
 * Barriers are unconditional (PoCL compiles conditional ones by duplicating code). */
ATT_INLINE void reduce_heads(LPTR float* red, LPTR float* dst, int hg, const int is_max) {
    int l = LID(0);
    int r = l >> 4, u = l & 15;
    float x = 0.0f;
    if (r < hg) {
        LPTR const float* p = red + r * ATT_WG + u * 8;
        x = p[0];
        for (int i = 1; i < 8; ++i) x = is_max ? FMAXF(x, p[i]) : x + p[i];
    }
    BARRIER;
    if (r < hg) red[r * ATT_WG + u] = x;
    BARRIER;
    if (l < hg) {
        LPTR const float* p = red + l * ATT_WG;
        x = p[0];
        for (int i = 1; i < 16; ++i) x = is_max ? FMAXF(x, p[i]) : x + p[i];
        dst[l] = x;
    }
    BARRIER;
}

/* A raw score q.k as ggml's attention sees it: soft-capped first when cap > 0 (Gemma 2:
 * cap * tanh(s / cap), as build_attn_mha without flash attention), then scaled. */
ATT_INLINE float att_score(float d, float scale, float cap) {
    if (cap > 0.0f) d = TANHF(d * (1.0f / cap)) * cap;
    return d * scale;
}

/* Scores of the chunk, one thread per kv row: ss[r * ATT_CH + lid] = (q_r . k_j) * scale, or -inf
 * where row j is masked. K is staged through shared memory in slices of ATT_KS columns, read along
 * rows (coalesced) and stored transposed, so that thread j then reads its row with the other
 * threads' rows beside it (conflict-free, and vector loads for PoCL); each K row is read once for
 * all hg heads. Partial sums live in ss (private arrays must not live across barriers on PoCL). */
ATT_INLINE void split_scores(GLOBAL const uchar* k, LPTR const float* sq, LPTR float* ss, LPTR float* skt, int g,
                             int n_head_kv, int dk, int hg, int j0, int ja, int jb, float scale, float cap, const int is_f16) {
    int lid = LID(0);
    for (int r = 0; r < hg; ++r) ss[r * ATT_CH + lid] = 0.0f;
    for (int i0 = 0; i0 < dk; i0 += ATT_KS) {
        int w = att_min(ATT_KS, dk - i0);
        for (int e = lid; e < ATT_CH * ATT_KS; e += ATT_WG) {
            int jj = e / ATT_KS, ii = e - jj * ATT_KS;
            int j = j0 + jj;
            skt[ii * (ATT_CH + 1) + jj] =
                j >= ja && j < jb && ii < w ? kv_ld(k, ((u64)j * n_head_kv + g) * dk + i0 + ii, is_f16) : 0.0f;
        }
        BARRIER;
        for (int r = 0; r < hg; ++r) {
            LPTR const float* qr = sq + r * dk + i0;
            float a = ss[r * ATT_CH + lid];
            for (int ii = 0; ii < w; ++ii) a += qr[ii] * skt[ii * (ATT_CH + 1) + lid];
            ss[r * ATT_CH + lid] = a;
        }
        BARRIER;
    }
    int j = j0 + lid;
    for (int r = 0; r < hg; ++r) ss[r * ATT_CH + lid] = j >= ja && j < jb ? att_score(ss[r * ATT_CH + lid], scale, cap) : -INFINITY;
}

/* Per head r: the chunk's max m_r (into sst[r]) and sum l_r of exp(s - m_r) (into sst[ATT_HG + r]);
 * with keep_p, ss becomes exp(s - m_r) (the chunk's unnormalised probabilities). */
ATT_INLINE void split_stats(LPTR float* ss, LPTR float* red, LPTR float* sst, int hg, const int keep_p) {
    int l = LID(0);
    for (int r = 0; r < hg; ++r) red[r * ATT_WG + l] = ss[r * ATT_CH + l];
    BARRIER;
    reduce_heads(red, sst, hg, 1);
    for (int r = 0; r < hg; ++r) {
        float s = ss[r * ATT_CH + l];
        float e = s == -INFINITY ? 0.0f : EXPF(s - sst[r]);
        if (keep_p) ss[r * ATT_CH + l] = e;
        red[r * ATT_WG + l] = e;
    }
    BARRIER;
    reduce_heads(red, sst + ATT_HG, hg, 0);
}

/* o[r][col] = sum over the visible rows j of ss[r][j - j0] * V[j][col], written at
 * out[off + r * head_stride + col]. Threads split dv (coalesced V row reads) and, when
 * dv < ATT_WG, also the rows (nj interleaved subsets, summed through `red`). */
ATT_INLINE void split_pv(GLOBAL const uchar* v, LPTR const float* ss, LPTR float* red, GLOBAL float* out, u64 off,
                         u64 head_stride, int g, int n_head_kv, int dv, int hg, int j0, int ja, int jb,
                         const int is_f16) {
    int lid = LID(0);
    int nj = dv >= ATT_WG ? 1 : ATT_WG / dv;
    int jp = dv >= ATT_WG ? 0 : lid / dv;
    int col0 = dv >= ATT_WG ? lid : lid - jp * dv;
    float acc[ATT_COLS][ATT_HG];
#pragma unroll
    for (int b = 0; b < ATT_COLS; ++b)
#pragma unroll
        for (int r = 0; r < ATT_HG; ++r) acc[b][r] = 0.0f;
    if (jp < nj) {
        for (int j = ja + jp; j < jb; j += nj) {
            u64 row = ((u64)j * n_head_kv + g) * dv;
            LPTR const float* pj = ss + (j - j0);
#pragma unroll
            for (int b = 0; b < ATT_COLS; ++b) {
                int col = col0 + b * ATT_WG;
                if (col < dv) {
                    float x = kv_ld(v, row + col, is_f16);
#pragma unroll
                    for (int r = 0; r < ATT_HG; ++r)
                        if (r < hg) acc[b][r] += pj[r * ATT_CH] * x;
                }
            }
        }
    }
    /* dv < ATT_WG: nj partial sums per output, nj * ATT_HG * dv <= ATT_HG * ATT_WG floats of red.
     * (acc is not used after the barrier: PoCL does not keep private arrays across barriers.) */
    if (nj == 1) {
#pragma unroll
        for (int b = 0; b < ATT_COLS; ++b) {
            int col = col0 + b * ATT_WG;
#pragma unroll
            for (int r = 0; r < ATT_HG; ++r)
                if (r < hg && col < dv) out[off + r * head_stride + col] = acc[b][r];
        }
    } else if (jp < nj) {
#pragma unroll
        for (int r = 0; r < ATT_HG; ++r)
            if (r < hg) red[(jp * ATT_HG + r) * dv + col0] = acc[0][r];
    }
    BARRIER;
    if (nj > 1 && jp == 0) {
        for (int r = 0; r < hg; ++r) {
            float s = 0.0f;
            for (int u = 0; u < nj; ++u) s += red[(u * ATT_HG + r) * dv + col0];
            out[off + r * head_stride + col0] = s;
        }
    }
}

/* f32 storage: one pass per chunk (flash-decoding). part_m/part_l: the chunk's max and sum of
 * exp(s - m) per head; part_o: sum of exp(s - m) V. attn_merge rescales and adds the chunks.
 * Layouts: part_m[(t * n_head + h) * n_chunks + c], part_o[((t * n_head + h) * n_chunks + c) * dv + col]. */
KERNEL void attn_split_f32(GLOBAL const float* q, GLOBAL const uchar* k, GLOBAL const uchar* v, GLOBAL const int* qpos,
                           GLOBAL float* part_o, GLOBAL float* part_m, GLOBAL float* part_l, int n_head, int n_head_kv,
                           int n_kv, int dk, int dv, int hg_max, int n_hsub, int window, float scale, float cap) {
    SHARED float sq[ATT_HG * ATT_DMAX];
    SHARED float ss[ATT_HG * ATT_CH];
    SHARED float red[ATT_HG * ATT_WG];
    SHARED float sst[2 * ATT_HG];
    SHARED float skt[ATT_KS * (ATT_CH + 1)];
    int t, g, h0, hg, j0, ja, jb;
    if (!split_setup(qpos, n_head, n_head_kv, n_kv, hg_max, n_hsub, window, &t, &g, &h0, &hg, &j0, &ja, &jb)) return;
    int c = GRP(0), n_chunks = NGRP(0);
    load_q(q, sq, t, n_head, h0, hg, dk, 0);
    BARRIER;
    split_scores(k, sq, ss, skt, g, n_head_kv, dk, hg, j0, ja, jb, scale, cap, 0);
    BARRIER;
    split_stats(ss, red, sst, hg, 1);
    u64 hb = (u64)t * n_head + h0;
    if (LID(0) < hg) {
        part_m[(hb + LID(0)) * n_chunks + c] = sst[LID(0)];
        part_l[(hb + LID(0)) * n_chunks + c] = sst[ATT_HG + LID(0)];
    }
    split_pv(v, ss, red, part_o, (hb * n_chunks + c) * dv, (u64)n_chunks * dv, g, n_head_kv, dv, hg, j0, ja, jb, 0);
}

/* f16 storage, pass 1: the scores of the chunk (kept in `scores` (n_tok, n_head, n_kv)) and its
 * max and sum per head, as attn_split_f32 writes them. */
KERNEL void attn_split_scores_f16(GLOBAL const float* q, GLOBAL const uchar* k, GLOBAL const int* qpos,
                                  GLOBAL float* scores, GLOBAL float* part_m, GLOBAL float* part_l, int n_head,
                                  int n_head_kv, int n_kv, int dk, int hg_max, int n_hsub, int window, float scale, float cap) {
    SHARED float sq[ATT_HG * ATT_DMAX];
    SHARED float ss[ATT_HG * ATT_CH];
    SHARED float red[ATT_HG * ATT_WG];
    SHARED float sst[2 * ATT_HG];
    SHARED float skt[ATT_KS * (ATT_CH + 1)];
    int t, g, h0, hg, j0, ja, jb;
    if (!split_setup(qpos, n_head, n_head_kv, n_kv, hg_max, n_hsub, window, &t, &g, &h0, &hg, &j0, &ja, &jb)) return;
    int c = GRP(0), n_chunks = NGRP(0);
    load_q(q, sq, t, n_head, h0, hg, dk, 1);
    BARRIER;
    split_scores(k, sq, ss, skt, g, n_head_kv, dk, hg, j0, ja, jb, scale, cap, 1);
    BARRIER;
    u64 hb = (u64)t * n_head + h0;
    int j = j0 + LID(0);
    if (j >= ja && j < jb)
        for (int r = 0; r < hg; ++r) scores[(hb + r) * n_kv + j] = ss[r * ATT_CH + LID(0)];
    split_stats(ss, red, sst, hg, 0);
    if (LID(0) < hg) {
        part_m[(hb + LID(0)) * n_chunks + c] = sst[LID(0)];
        part_l[(hb + LID(0)) * n_chunks + c] = sst[ATT_HG + LID(0)];
    }
}

/* the chunks [c_lo, c_hi] that hold a visible row of a query at position p (c_hi < c_lo: none) */
ATT_INLINE void chunk_range(int p, int n_kv, int window, int* c_lo, int* c_hi) {
    int lo = vis_lo(p, window), hi = vis_hi(p, n_kv);
    *c_lo = lo / ATT_CH;
    *c_hi = hi > lo ? (hi - 1) / ATT_CH : *c_lo - 1;
}

/* The softmax's global max M (the sink included) and 1 / sum of a head from its chunks' partial
 * statistics; inv is 0 when the query sees nothing (then every probability is 0). */
ATT_INLINE void global_stats(GLOBAL const float* part_m, GLOBAL const float* part_l, u64 base, int c_lo, int c_hi,
                             float sink, int has_sink, float* M, float* inv) {
    float m = has_sink ? sink : -INFINITY;
    for (int c = c_lo; c <= c_hi; ++c) m = FMAXF(m, part_m[base + c]);
    float l = 0.0f;
    if (m != -INFINITY) {
        for (int c = c_lo; c <= c_hi; ++c) l += part_l[base + c] * EXPF(part_m[base + c] - m);
        if (has_sink) l += EXPF(sink - m);
    }
    *M = m;
    *inv = l > 0.0f ? 1.0f / l : 0.0f;
}

/* f16 storage, pass 2: p = round_f16(exp(s - M) / L) with the global M and L (what ggml's
 * soft_max then f16 cast give), part_o = sum of p V over the chunk; attn_merge adds the chunks. */
KERNEL void attn_split_pv_f16(GLOBAL const uchar* v, GLOBAL const int* qpos, GLOBAL const float* scores,
                              GLOBAL const float* part_m, GLOBAL const float* part_l, GLOBAL const float* sinks,
                              GLOBAL float* part_o, int n_head, int n_head_kv, int n_kv, int dv, int hg_max, int n_hsub,
                              int window, int has_sinks) {
    SHARED float ss[ATT_HG * ATT_CH];
    SHARED float red[ATT_HG * ATT_WG];
    SHARED float sst[2 * ATT_HG];
    int t, g, h0, hg, j0, ja, jb;
    if (!split_setup(qpos, n_head, n_head_kv, n_kv, hg_max, n_hsub, window, &t, &g, &h0, &hg, &j0, &ja, &jb)) return;
    int c = GRP(0), n_chunks = NGRP(0);
    u64 hb = (u64)t * n_head + h0;
    if (LID(0) < hg) {
        int c_lo, c_hi;
        float M, inv;
        chunk_range(qpos[t], n_kv, window, &c_lo, &c_hi);
        global_stats(part_m, part_l, (hb + LID(0)) * n_chunks, c_lo, c_hi, has_sinks ? sinks[h0 + LID(0)] : 0.0f,
                     has_sinks, &M, &inv);
        sst[LID(0)] = M;
        sst[ATT_HG + LID(0)] = inv;
    }
    BARRIER;
    int j = j0 + LID(0);
    for (int r = 0; r < hg; ++r) {
        float p = 0.0f;
        if (j >= ja && j < jb) p = round_f16(EXPF(scores[(hb + r) * n_kv + j] - sst[r]) * sst[ATT_HG + r]);
        ss[r * ATT_CH + LID(0)] = p;
    }
    BARRIER;
    split_pv(v, ss, red, part_o, (hb * n_chunks + c) * dv, (u64)n_chunks * dv, g, n_head_kv, dv, hg, j0, ja, jb, 1);
}

/* out[t, h, :] from the chunks' partial outputs: their sum when they are already normalised (f16
 * storage), else sum of o_c exp(m_c - M) / (sum of l_c exp(m_c - M) + exp(sink - M)). Work-group
 * (h, t), threads over dv; chunks that see nothing were never written and are not read. */
KERNEL void attn_merge(GLOBAL const float* part_o, GLOBAL const float* part_m, GLOBAL const float* part_l,
                       GLOBAL const int* qpos, GLOBAL const float* sinks, GLOBAL float* out, int n_head, int n_kv,
                       int n_chunks, int dv, int window, int has_sinks, int normalised) {
    int h = GRP(1), t = GRP(2);
    int c_lo, c_hi;
    chunk_range(qpos[t], n_kv, window, &c_lo, &c_hi);
    u64 base = ((u64)t * n_head + h) * n_chunks;
    float M = 0.0f, inv = 1.0f;
    if (!normalised)
        global_stats(part_m, part_l, base, c_lo, c_hi, has_sinks ? sinks[h] : 0.0f, has_sinks, &M, &inv);
    for (int col = LID(0); col < dv; col += ATT_MWG) {
        float acc = 0.0f;
        if (inv > 0.0f) {
            for (int c = c_lo; c <= c_hi; ++c) {
                float o = part_o[(base + c) * dv + col];
                acc += normalised ? o : o * EXPF(part_m[base + c] - M);
            }
        }
        out[((u64)t * n_head + h) * dv + col] = acc * inv;
    }
}

/* ------------------------------------------------------------------------------ tiled (prompts) */

/* Work-group (token block, head group): query rows rho = tl * hg + r (token t0 + tl, head h0 + r)
 * against K/V tiles of bk rows staged in shared memory, from the block's first visible key to its
 * last. f32 storage: one pass with the online softmax (TILE_FLASH). f16 storage: a pass that finds
 * each row's max and sum (TILE_STATS), then one that recomputes the scores, rounds the normalised
 * probabilities to f16 and multiplies V (TILE_PV16).
 * Shared: sq (rows x dk); skv, the K tile transposed (dk x (bk + 1): thread jj reads column jj
 * beside its neighbours, conflict-free), then the V tile (bk x dv, read along rows); ss (rows x
 * bk); so (rows x dv: the outputs, each owned by one thread); sm / sl / sa (per row: max, sum,
 * rescale); sp (per token: position). Nothing private lives across a barrier inside a loop but
 * loop-invariant scalars (PoCL 3.1 lost private values there), hence shared accumulators and the
 * two f16 passes written out rather than looped. */
#define TILE_STATS 0
#define TILE_PV16 1
#define TILE_FLASH 2

ATT_INLINE void tiled_pass(const int mode, GLOBAL const uchar* k, GLOBAL const uchar* v, LPTR const int* sp,
                           LPTR const float* sq, LPTR float* skv, LPTR float* ss, LPTR float* so, LPTR float* sm,
                           LPTR float* sl, LPTR float* sa, int lo, int hi, int R, int hg, int g, int n_head_kv, int dk,
                           int dv, int bk, int window, float scale, float cap) {
    const int is_f16 = mode != TILE_FLASH;
    int lid = LID(0);
    for (int j0 = lo; j0 < hi; j0 += bk) {
        int nk = att_min(bk, hi - j0);
        for (int e = lid; e < bk * dk; e += ATT_WG) {   /* K tile, transposed: skv[i * (bk + 1) + jj] */
            int jj = e / dk, i = e - jj * dk;
            skv[i * (bk + 1) + jj] = jj < nk ? kv_ld(k, ((u64)(j0 + jj) * n_head_kv + g) * dk + i, is_f16) : 0.0f;
        }
        BARRIER;
        for (int e = lid; e < R * bk; e += ATT_WG) {
            int rho = e / bk, jj = e - rho * bk;
            LPTR const float* qr = sq + rho * dk;
            float d = 0.0f;
            for (int i = 0; i < dk; ++i) d += qr[i] * skv[i * (bk + 1) + jj];
            int p = sp[rho / hg], j = j0 + jj;
            int vis = jj < nk && j <= p && (window <= 0 || p - j < window);
            float sc = att_score(d, scale, cap);
            if (mode == TILE_PV16)   /* the probability, normalised then rounded as ggml does */
                ss[e] = vis ? round_f16(EXPF(sc - sm[rho]) * sl[rho]) : 0.0f;
            else
                ss[e] = vis ? sc : -INFINITY;
        }
        BARRIER;
        if (mode != TILE_PV16) {   /* running max and sum per row (TILE_FLASH: ss becomes exp(s - m)) */
            for (int rho = lid; rho < R; rho += ATT_WG) {
                LPTR float* sr = ss + rho * bk;
                float mo = sm[rho], mt = mo;
                for (int jj = 0; jj < nk; ++jj) mt = FMAXF(mt, sr[jj]);
                float l = 0.0f;
                for (int jj = 0; jj < nk; ++jj) {
                    float x = mt == -INFINITY ? 0.0f : EXPF(sr[jj] - mt);
                    if (mode == TILE_FLASH) sr[jj] = x;
                    l += x;
                }
                float alpha = mt == -INFINITY ? 1.0f : EXPF(mo - mt);
                sl[rho] = sl[rho] * alpha + l;
                sm[rho] = mt;
                sa[rho] = alpha;
            }
        }
        if (mode != TILE_STATS)   /* the V tile replaces the K tile (read only before the barrier above) */
            for (int e = lid; e < nk * dv; e += ATT_WG) {
                int jj = e / dv, i = e - jj * dv;
                skv[jj * dv + i] = kv_ld(v, ((u64)(j0 + jj) * n_head_kv + g) * dv + i, is_f16);
            }
        BARRIER;
        if (mode != TILE_STATS) {   /* each thread owns outputs lid, lid + ATT_WG, ... of so */
            for (int e = lid; e < R * dv; e += ATT_WG) {
                int rho = e / dv, col = e - rho * dv;
                LPTR const float* pr = ss + rho * bk;
                float o = mode == TILE_FLASH ? so[e] * sa[rho] : so[e];
                for (int jj = 0; jj < nk; ++jj) o += pr[jj] * skv[jj * dv + col];
                so[e] = o;
            }
        }
        BARRIER;
    }
}

ATT_INLINE void tiled_body(GLOBAL const float* q, GLOBAL const uchar* k, GLOBAL const uchar* v, GLOBAL const int* qpos,
                           GLOBAL const float* sinks, GLOBAL float* out, int n_tok, int n_head, int n_head_kv, int n_kv,
                           int dk, int dv, int hg_max, int n_hsub, int bt, int bk, int window, float scale, float cap,
                           int has_sinks, const int is_f16, LPTR float* sq, LPTR float* skv, LPTR float* ss,
                           LPTR float* so, LPTR float* sm, LPTR float* sl, LPTR float* sa, LPTR int* sp) {
    int lid = LID(0);
    int gs = GRP(1);
    int group = n_head / n_head_kv;
    int g = gs / n_hsub, hs = gs - g * n_hsub;
    int h0 = g * group + hs * hg_max;
    int hg = att_min(hg_max, group - hs * hg_max);
    int t0 = GRP(0) * bt;
    int nt = att_min(bt, n_tok - t0);
    int R = nt * hg;
    for (int i = lid; i < nt; i += ATT_WG) sp[i] = qpos[t0 + i];
    for (int e = lid; e < R * dv; e += ATT_WG) so[e] = 0.0f;
    for (int e = lid; e < R * dk; e += ATT_WG) {
        int rho = e / dk, tl = rho / hg;
        float x = q[((u64)(t0 + tl) * n_head + h0) * dk + (e - tl * hg * dk)];
        sq[e] = is_f16 ? round_f16(x) : x;
    }
    for (int e = lid; e < R; e += ATT_WG) {
        sm[e] = -INFINITY;
        sl[e] = 0.0f;
        sa[e] = 1.0f;
    }
    BARRIER;
    int lo = n_kv, hi = 0;   /* keys any query of the block sees */
    for (int i = 0; i < nt; ++i) {
        int a = vis_lo(sp[i], window), b = vis_hi(sp[i], n_kv);
        if (b > a) {
            lo = att_min(lo, a);
            hi = att_max(hi, b);
        }
    }
    if (is_f16) {
        tiled_pass(TILE_STATS, k, v, sp, sq, skv, ss, so, sm, sl, sa, lo, hi, R, hg, g, n_head_kv, dk, dv, bk, window,
                   scale, cap);
        for (int rho = lid; rho < R; rho += ATT_WG) {   /* M (the sink included) and 1 / sum per row */
            float m = sm[rho], l = sl[rho];
            float sink = has_sinks ? sinks[h0 + rho % hg] : -INFINITY;
            float M = FMAXF(m, sink);
            float tot = 0.0f;
            if (M != -INFINITY) tot = (m == -INFINITY ? 0.0f : l * EXPF(m - M)) + (has_sinks ? EXPF(sink - M) : 0.0f);
            sm[rho] = M;
            sl[rho] = tot > 0.0f ? 1.0f / tot : 0.0f;
        }
        BARRIER;
        tiled_pass(TILE_PV16, k, v, sp, sq, skv, ss, so, sm, sl, sa, lo, hi, R, hg, g, n_head_kv, dk, dv, bk, window,
                   scale, cap);
    } else {
        tiled_pass(TILE_FLASH, k, v, sp, sq, skv, ss, so, sm, sl, sa, lo, hi, R, hg, g, n_head_kv, dk, dv, bk, window,
                   scale, cap);
    }
    for (int e = lid; e < R * dv; e += ATT_WG) {
        int rho = e / dv, tl = rho / hg;
        float o = so[e];
        if (!is_f16) {   /* the sink joins the sum; rows that saw nothing give 0 */
            float m = sm[rho];
            float sink = has_sinks ? sinks[h0 + rho % hg] : -INFINITY;
            float M = FMAXF(m, sink);
            if (m == -INFINITY) {
                o = 0.0f;
            } else {
                float tot = sl[rho] * EXPF(m - M) + (has_sinks ? EXPF(sink - M) : 0.0f);
                o = o * EXPF(m - M) / tot;
            }
        }
        out[((u64)(t0 + tl) * n_head + h0) * dv + (e - tl * hg * dv)] = o;
    }
}

#define ATT_TILED_SHARED                                                                              \
    SHARED float sq[ATT_QBUF];                                                                        \
    SHARED float skv[ATT_KVBUF];                                                                      \
    SHARED float ss[ATT_SBUF];                                                                        \
    SHARED float so[ATT_OBUF];                                                                        \
    SHARED float sm[ATT_ROWS];                                                                        \
    SHARED float sl[ATT_ROWS];                                                                        \
    SHARED float sa[ATT_ROWS];                                                                        \
    SHARED int sp[ATT_ROWS]

KERNEL void attn_tiled_f16(GLOBAL const float* q, GLOBAL const uchar* k, GLOBAL const uchar* v, GLOBAL const int* qpos,
                           GLOBAL const float* sinks, GLOBAL float* out, int n_tok, int n_head, int n_head_kv, int n_kv,
                           int dk, int dv, int hg_max, int n_hsub, int bt, int bk, int window, float scale, float cap,
                           int has_sinks) {
    ATT_TILED_SHARED;
    tiled_body(q, k, v, qpos, sinks, out, n_tok, n_head, n_head_kv, n_kv, dk, dv, hg_max, n_hsub, bt, bk, window, scale, cap,
               has_sinks, 1, sq, skv, ss, so, sm, sl, sa, sp);
}

KERNEL void attn_tiled_f32(GLOBAL const float* q, GLOBAL const uchar* k, GLOBAL const uchar* v, GLOBAL const int* qpos,
                           GLOBAL const float* sinks, GLOBAL float* out, int n_tok, int n_head, int n_head_kv, int n_kv,
                           int dk, int dv, int hg_max, int n_hsub, int bt, int bk, int window, float scale, float cap,
                           int has_sinks) {
    ATT_TILED_SHARED;
    tiled_body(q, k, v, qpos, sinks, out, n_tok, n_head, n_head_kv, n_kv, dk, dv, hg_max, n_hsub, bt, bk, window, scale, cap,
               has_sinks, 0, sq, skv, ss, so, sm, sl, sa, sp);
}
