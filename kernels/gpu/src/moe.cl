/* moe.cl: mixture-of-experts routing and combination on the device, so that expert ids never
 * visit the host (a decode step stays capturable in a CUDA graph).
 *
 * moe_route, one thread per token: gating 0 ("softmax": Mixtral, Qwen3-MoE) takes the softmax of
 * all router logits, the top k probabilities, renormalised if `norm`; gating 1 ("softmax_weight":
 * gpt-oss) takes the top k logits and a softmax over those. Ties go to the lower expert id, as a
 * stable argsort does. */

DEVICE int moe_chosen(GLOBAL const int* ids, int u, int j) {
    for (int v = 0; v < u; ++v)
        if (ids[v] == j) return 1;
    return 0;
}

KERNEL void moe_route(GLOBAL const float* logits, GLOBAL int* ids, GLOBAL float* w, int n_expert, int k, int mode,
                      int norm) {
    int t = GID(0);
    GLOBAL const float* l = logits + (u64)t * n_expert;
    GLOBAL int* it = ids + (u64)t * k;
    GLOBAL float* wt = w + (u64)t * k;
    float m = -INFINITY, s = 0.0f;
    if (mode == 0) {
        for (int j = 0; j < n_expert; ++j) m = FMAXF(m, l[j]);
        for (int j = 0; j < n_expert; ++j) s += EXPF(l[j] - m);
    }
    float inv = 1.0f / s;
    for (int u = 0; u < k; ++u) {
        int bi = -1;
        float best = -INFINITY;
        for (int j = 0; j < n_expert; ++j) {
            if (moe_chosen(it, u, j)) continue;
            float v = l[j];
            if (bi < 0 || v > best) { best = v; bi = j; }
        }
        it[u] = bi;
        wt[u] = mode == 0 ? EXPF(best - m) * inv : best;
    }
    if (mode == 0) {
        if (norm) {
            float tot = 0.0f;
            for (int u = 0; u < k; ++u) tot += wt[u];
            for (int u = 0; u < k; ++u) wt[u] = wt[u] / tot;
        }
        return;
    }
    float mx = -INFINITY, tot = 0.0f;
    for (int u = 0; u < k; ++u) mx = FMAXF(mx, wt[u]);
    for (int u = 0; u < k; ++u) { float e = EXPF(wt[u] - mx); wt[u] = e; tot += e; }
    float r = 1.0f / tot;
    for (int u = 0; u < k; ++u) wt[u] = wt[u] * r;
}

/* y[t, c] = sum_u w[t, u] * d[t, u, c]: thread (c, t) */
KERNEL void moe_combine(GLOBAL const float* d, GLOBAL const float* w, GLOBAL float* y, int k, int n) {
    int c = GID(0), t = GID(1);
    if (c >= n) return;
    float acc = 0.0f;
    for (int u = 0; u < k; ++u) acc += w[(u64)t * k + u] * d[((u64)t * k + u) * n + c];
    y[(u64)t * n + c] = acc;
}
