/* elementwise.cl: one thread per element, any work-group size.
 *
 * Semantics follow kernels/ops_numpy.py (ggml's CPU code): gelu is ggml's fp16-table gelu
 * (round x to f16, tanh-approximation gelu in f32, round to f16), swiglu_oai is gpt-oss's clamped
 * SwiGLU. Binary ops broadcast b over rows when it is shorter (nb divides n): y[i] = a[i] op b[i % nb].
 */

KERNEL void add(GLOBAL const float* a, GLOBAL const float* b, GLOBAL float* y, int n, int nb) {
    int i = GID(0);
    if (i < n) y[i] = a[i] + b[i % nb];
}

KERNEL void mul(GLOBAL const float* a, GLOBAL const float* b, GLOBAL float* y, int n, int nb) {
    int i = GID(0);
    if (i < n) y[i] = a[i] * b[i % nb];
}

KERNEL void scale(GLOBAL const float* a, GLOBAL float* y, int n, float s) {
    int i = GID(0);
    if (i < n) y[i] = a[i] * s;
}

DEVICE float silu_f(float x) { return x / (1.0f + EXPF(-x)); }

DEVICE float gelu_tanh_f(float x) {
    return 0.5f * x * (1.0f + TANHF(0.7978845608028654f * x * (1.0f + 0.044715f * x * x)));
}

DEVICE float gelu_f(float x) {  /* GGML_GELU_FP16: table of fp16(gelu(fp16(x))) */
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return round_f16(gelu_tanh_f(round_f16(x)));
}

KERNEL void silu(GLOBAL const float* x, GLOBAL float* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = silu_f(x[i]);
}

KERNEL void gelu(GLOBAL const float* x, GLOBAL float* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = gelu_f(x[i]);
}

KERNEL void softcap(GLOBAL const float* x, GLOBAL float* y, int n, float cap) {
    int i = GID(0);
    if (i < n) y[i] = TANHF(x[i] / cap) * cap;
}

KERNEL void swiglu(GLOBAL const float* g, GLOBAL const float* u, GLOBAL float* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = silu_f(g[i]) * u[i];
}

KERNEL void geglu(GLOBAL const float* g, GLOBAL const float* u, GLOBAL float* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = gelu_f(g[i]) * u[i];
}

KERNEL void swiglu_oai(GLOBAL const float* g, GLOBAL const float* u, GLOBAL float* y, int n, float alpha, float limit) {
    int i = GID(0);
    if (i >= n) return;
    float x = FMINF(g[i], limit);
    float v = FMAXF(FMINF(u[i], limit), -limit);
    y[i] = (x / (1.0f + EXPF(alpha * -x))) * (v + 1.0f);
}

/* f32 <-> f16 storage (round to nearest even), as numpy's astype(float16) */
KERNEL void f32_to_f16_k(GLOBAL const float* x, GLOBAL ushort* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = f32_to_f16(x[i]);
}

KERNEL void f16_to_f32_k(GLOBAL const ushort* x, GLOBAL float* y, int n) {
    int i = GID(0);
    if (i < n) y[i] = f16_to_f32(x[i]);
}
