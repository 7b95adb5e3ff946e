/* norm_rope.cl: row kernels (one work-group of RED_WG threads per row) and rotary embeddings.
 * Semantics: kernels/ops_numpy.py (ggml's CPU rms_norm, soft_max, rope_yarn). */
#include "reduce.h"

/* y = x / sqrt(mean(x^2) + eps) * w, per row of n (w optional) */
KERNEL void rms_norm(GLOBAL const float* x, GLOBAL const float* w, GLOBAL float* y, int n, float eps, int has_w) {
    SHARED float buf[RED_WG];
    int row = GRP(0);
    GLOBAL const float* xr = x + (u64)row * n;
    GLOBAL float* yr = y + (u64)row * n;
    float s = 0.0f;
    for (int i = LID(0); i < n; i += RED_WG) s += xr[i] * xr[i];
    s = wg_sum(s, buf);
    float sc = 1.0f / SQRTF(s / (float)n + eps);
    for (int i = LID(0); i < n; i += RED_WG) {
        float v = xr[i] * sc;
        yr[i] = has_w ? v * w[i] : v;
    }
}

/* softmax of each row of n: exp(x - max) / sum */
KERNEL void softmax_rows(GLOBAL const float* x, GLOBAL float* y, int n) {
    SHARED float buf[RED_WG];
    int row = GRP(0);
    GLOBAL const float* xr = x + (u64)row * n;
    GLOBAL float* yr = y + (u64)row * n;
    float m = -INFINITY;
    for (int i = LID(0); i < n; i += RED_WG) m = FMAXF(m, xr[i]);
    m = wg_max(m, buf);
    float s = 0.0f;
    for (int i = LID(0); i < n; i += RED_WG) s += EXPF(xr[i] - m);
    s = wg_sum(s, buf);
    float inv = 1.0f / s;
    for (int i = LID(0); i < n; i += RED_WG) yr[i] = EXPF(xr[i] - m) * inv;
}

/* RoPE on x (n_tok, n_head, head_dim): thread (i, h, t) handles pair i of head h of token t.
 * Pairs i < n_half = n_dims/2 rotate ((2i, 2i+1) normal, (i, i+n_half) neox) by theta_i, where
 * theta_0 = pos and theta_{i} = theta_{i-1} * theta_scale in float32 (ggml_rope_cache_init);
 * frequency factors divide theta, YaRN mixes interpolated and extrapolated angles. Elements at
 * n_dims and beyond pass through. */
KERNEL void rope(GLOBAL const float* x, GLOBAL const int* pos, GLOBAL float* y, int n_head, int head_dim, int n_dims,
                 int neox, float theta_scale, float freq_scale, float ext_factor, float mscale, float low, float high,
                 GLOBAL const float* ff, int has_ff, int n_half) {
    int i = GID(0), h = GID(1), t = GID(2);
    if (i >= head_dim / 2 || h >= n_head) return;
    u64 base = ((u64)t * n_head + h) * head_dim;
    GLOBAL const float* xr = x + base;
    GLOBAL float* yr = y + base;
    if (i >= n_half) {
        yr[2 * i] = xr[2 * i];
        yr[2 * i + 1] = xr[2 * i + 1];
        return;
    }
    float theta = (float)pos[t];
    for (int j = 0; j < i; ++j) theta *= theta_scale;
    float th_extrap = has_ff ? theta / ff[i] : theta;
    float th_interp = FMUL_RN(freq_scale, th_extrap);
    float th = th_interp;
    if (ext_factor != 0.0f) {  /* each step rounded as the reference rounds it (see FMUL_RN) */
        float r = ((float)i - low) / FMAXF(0.001f, high - low);
        float ramp = 1.0f - FMINF(1.0f, FMAXF(0.0f, r));
        float mix = FMUL_RN(ramp, ext_factor);
        th = FADD_RN(FMUL_RN(th_interp, 1.0f - mix), FMUL_RN(th_extrap, mix));
    }
    float c = COSF(th) * mscale, s = SINF(th) * mscale;
    int i0 = neox ? i : 2 * i;
    int i1 = neox ? i + n_half : 2 * i + 1;
    float x0 = xr[i0], x1 = xr[i1];
    yr[i0] = FADD_RN(FMUL_RN(x0, c), -FMUL_RN(x1, s));
    yr[i1] = FADD_RN(FMUL_RN(x0, s), FMUL_RN(x1, c));
}
