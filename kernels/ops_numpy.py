"""Elementwise ops and attention in NumPy, with ggml's CPU semantics (the reference for every backend).

Each op follows the ggml CPU code (ggml-org/ggml `src/ggml-cpu/ops.cpp`, `vec.h`, `ggml.c`; the same
files live under `ggml/src/` in llama.cpp) down to the float32 roundings where that is cheap:

* rms_norm (`ggml_compute_forward_rms_norm_f32`): `sum += (double)(x*x)` (the square in f32, the
  sum in double); `mean = (float)(sum/n)`; `scale = 1.0f/sqrtf(mean + eps)`; `y = (x*scale)*w` in f32.
* rope (`ggml_compute_forward_rope_flt`, `ggml_rope_cache_init`, `rope_yarn`, `rope_yarn_ramp`):
  `theta_scale = powf(freq_base, -2.0f/n_dims)`; per position the angle starts at `(float)pos` and is
  multiplied by `theta_scale` once per pair *in float32* (`theta *= theta_scale`: a running product,
  not `pos * theta_scale**i`); pair i uses `theta_extrap = theta/freq_factors[i]`,
  `theta_interp = freq_scale*theta_extrap`; with YaRN (`ext_factor != 0`)
  `ramp = 1 - clamp((i - low)/max(0.001f, high - low), 0, 1)`, `mix = ramp*ext_factor`,
  `theta = theta_interp*(1-mix) + theta_extrap*mix`, `mscale = attn_factor*(1 + 0.1f*logf(1/freq_scale))`;
  `cos = cosf(theta)*mscale`, `sin = sinf(theta)*mscale` (cosf/sinf/logf/powf are evaluated in double
  and rounded, i.e. correctly rounded float results). Corr dims as `ggml_rope_yarn_corr_dims` (ggml.c):
  `low = max(0, floorf(corr(beta_fast)))`, `high = min(n_dims-1, ceilf(corr(beta_slow)))`,
  `corr(b) = n_dims*logf(n_ctx_orig/(b*2*pi)) / (2*logf(freq_base))`. NORMAL rotates
  (x[2i], x[2i+1]), NEOX (x[i], x[i+n_dims/2]); dims >= n_dims pass through unchanged.
* softmax (`ggml_compute_forward_soft_max_f32`): `e = exp(x - max)` in f32, the sum in double,
  `y = e * (float)(1/sum)`.
* silu: `x/(1+expf(-x))`. gelu: ggml's *CPU* gelu, which is the tanh approximation
  `0.5x(1+tanh(sqrt(2/pi) x (1+0.044715x^2)))` looked up in an fp16 table (`GGML_GELU_FP16`, vec.h):
  `x <= -10 -> 0`, `x >= 10 -> x`, otherwise `fp16(gelu_f32(fp16(x)))`. `gelu_tanh` is the plain
  float32 formula (what the GPU backends of ggml compute).
* attention: scores `(q.k)*scale`, causal mask `kv_pos <= q_pos`, sliding window as llama.cpp's
  `llama_hparams::is_masked_swa` with `LLAMA_SWA_TYPE_STANDARD` (src/llama-hparams.h): masked iff
  `q_pos - kv_pos >= window`, so a query sees itself and the `window-1` positions before it;
  `kv_pos < 0` marks an empty cache slot (masked). Softmax with optional per-head sinks as
  `ggml_soft_max_ext` + `ggml_soft_max_add_sinks`: `M = max(max_j s_j, sink)`,
  `p_j = exp(s_j - M) / (sum_j exp(s_j - M) + exp(sink - M))`; the sink is not scaled and carries no
  value. A query that sees no key (and has no sink) gets zeros (ggml would produce NaN).
  `softcap` > 0 (Gemma 2's attn_logit_softcapping) caps the raw scores first, as `build_attn_mha`
  does without flash attention: `s = tanh(q.k * (1/cap)) * cap`, then the scale.
"""

from __future__ import annotations

import functools

import numpy as np

from .base import RopeParams

F32 = np.float32


# --- float32 helpers that mirror the C library calls ggml makes


def _logf(x) -> np.float32:
    with np.errstate(divide="ignore", invalid="ignore"):
        return F32(np.log(np.float64(F32(x))))


def _powf(x, y) -> np.float32:
    return F32(np.float64(F32(x)) ** np.float64(F32(y)))


def _gelu_tanh_f32(x: np.ndarray) -> np.ndarray:
    """ggml_gelu_f32 in float32: 0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f + GELU_COEF_A*x*x)))."""
    x = np.asarray(x, F32)
    inner = F32(0.7978845608028654) * x * (F32(1.0) + F32(0.044715) * x * x)
    t = np.tanh(inner.astype(np.float64)).astype(F32)
    return F32(0.5) * x * (F32(1.0) + t)


def _gelu_fp16_table() -> np.ndarray:
    """ggml_table_gelu_f16 as float32: entry i = fp16(gelu_f32(fp16 with bits i))."""
    with np.errstate(over="ignore", invalid="ignore"):
        xs = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(F32)
        return _gelu_tanh_f32(xs).astype(np.float16).astype(F32)


GELU_F16_TABLE = _gelu_fp16_table()


# --- RoPE pieces shared with the other backends (small tables, computed on the host)


def rope_corr_dims(n_dims: int, n_ctx_orig: int, freq_base: float, beta_fast: float, beta_slow: float):
    """ggml_rope_yarn_corr_dims: (low, high) pair indices of the YaRN ramp, as float32."""

    def corr_dim(beta):
        # n_dims * logf(n_ctx_orig / (n_rot * 2 * (float)M_PI)) / (2 * logf(base))
        denom = F32(beta) * F32(2.0) * F32(np.pi)
        with np.errstate(divide="ignore"):
            return F32(n_dims) * _logf(F32(n_ctx_orig) / denom) / (F32(2.0) * _logf(freq_base))

    with np.errstate(invalid="ignore", divide="ignore"):
        start = F32(np.floor(corr_dim(beta_fast)))
        end = F32(np.ceil(corr_dim(beta_slow)))
    low = F32(0.0) if F32(0.0) > start else start           # MAX(0, start)
    high = F32(n_dims - 1) if F32(n_dims - 1) < end else end  # MIN(n_dims - 1, end)
    return low, high


def rope_scalars(p: RopeParams):
    """The float32 constants of one rope call: (theta_scale, freq_scale, ext_factor, mscale, low, high)."""
    return _rope_scalars(p.n_dims, p.freq_base, p.freq_scale, p.ext_factor, p.attn_factor, p.beta_fast,
                         p.beta_slow, p.n_ctx_orig)


@functools.lru_cache(maxsize=256)
def _rope_scalars(n_dims, freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow, n_ctx_orig):
    theta_scale = _powf(freq_base, F32(-2.0) / F32(n_dims))
    freq_scale = F32(freq_scale)
    ext_factor = F32(ext_factor)
    mscale = F32(attn_factor)
    if ext_factor != 0:
        mscale = F32(mscale * (F32(1.0) + F32(0.1) * _logf(F32(1.0) / freq_scale)))
    low, high = rope_corr_dims(n_dims, n_ctx_orig, freq_base, beta_fast, beta_slow)
    return theta_scale, freq_scale, ext_factor, mscale, low, high


def rope_freq_factors(p: RopeParams) -> np.ndarray | None:
    if p.freq_factors is None:
        return None
    ff = np.ascontiguousarray(p.freq_factors, dtype=F32).reshape(-1)
    if ff.shape[0] < p.n_dims // 2:
        raise ValueError(f"freq_factors has {ff.shape[0]} entries, rope needs n_dims/2 = {p.n_dims // 2}")
    return ff[: p.n_dims // 2]


def rope_cos_sin(positions, p: RopeParams) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (n_tok, n_dims/2) float32 as ggml_rope_cache_init fills its cache (mscale included)."""
    pos = np.asarray(positions).reshape(-1)
    half = p.n_dims // 2
    theta_scale, freq_scale, ext_factor, mscale, low, high = rope_scalars(p)
    # theta_i = ((float)pos * ts) * ts ... : a float32 running product, like `theta *= theta_scale`
    steps = np.full((pos.shape[0], half), theta_scale, dtype=F32)
    if half:
        steps[:, 0] = pos.astype(F32)
    theta = np.multiply.accumulate(steps, axis=1, dtype=F32)
    ff = rope_freq_factors(p)
    theta_extrap = theta / ff[None, :] if ff is not None else theta
    theta_interp = freq_scale * theta_extrap
    if ext_factor != 0:
        y = (np.arange(half, dtype=F32) - low) / max(F32(0.001), F32(high - low))
        ramp = F32(1.0) - np.minimum(F32(1.0), np.maximum(F32(0.0), y))
        mix = ramp * ext_factor
        th = theta_interp * (F32(1.0) - mix)[None, :] + theta_extrap * mix[None, :]
    else:
        th = theta_interp
    th64 = th.astype(np.float64)
    cos = np.cos(th64).astype(F32) * mscale
    sin = np.sin(th64).astype(F32) * mscale
    return cos, sin


def check_rope(x_shape, p: RopeParams) -> None:
    if p.mode not in ("normal", "neox"):
        raise ValueError(f"unknown rope mode {p.mode!r} (normal | neox)")
    if p.n_dims % 2 or p.n_dims <= 0 or p.n_dims > x_shape[-1]:
        raise ValueError(f"rope n_dims {p.n_dims} must be even and <= head_dim {x_shape[-1]}")


def attention_mask(q_pos: np.ndarray, kv_pos: np.ndarray, window: int) -> np.ndarray:
    """(n_tok, n_kv) bool, True where the key is visible (see the module doc for the convention)."""
    qp = np.asarray(q_pos, np.int64)[:, None]
    kp = np.asarray(kv_pos, np.int64)[None, :]
    vis = (kp >= 0) & (kp <= qp)
    if window > 0:
        vis &= (qp - kp) < window
    return vis


def check_attention(q, k, v):
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError("attention takes q (n_tok, n_head, d), k and v (n_kv, n_head_kv, d)")
    n_head, n_head_kv = q.shape[1], k.shape[1]
    if v.shape[:2] != k.shape[:2] or q.shape[2] != k.shape[2]:
        raise ValueError(f"attention shapes do not match: q {q.shape}, k {k.shape}, v {v.shape}")
    if n_head_kv == 0 or n_head % n_head_kv:
        raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")


def check_spans(spans, n_tok: int, n_kv: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) int64 per query token: the cache rows [lo, hi) it attends over. `spans` None: every row
    (one sequence's cache); else the regions of the sequences of a batch in one pooled cache."""
    if spans is None:
        return np.zeros(n_tok, np.int64), np.full(n_tok, n_kv, np.int64)
    lo, hi = (np.ascontiguousarray(np.asarray(a).reshape(-1), dtype=np.int64) for a in spans)
    if lo.shape[0] != n_tok or hi.shape[0] != n_tok:
        raise ValueError(f"attention: spans for {lo.shape[0]}/{hi.shape[0]} tokens, not {n_tok}")
    if n_tok and (lo.min() < 0 or hi.max() > n_kv or np.any(lo > hi)):
        raise ValueError(f"attention: spans outside the cache's {n_kv} rows")
    return lo, hi


class NumpyOps:
    """Elementwise ops and attention on float32 NumPy arrays (mixin of the NumPy backend)."""

    activations = "f32"
    # matmul(..., path="rows"|"tiles") computes each row as in a call of any other size, but attention's
    # scores go through BLAS, whose kernels differ by the number of rows: not batch-invariant as a whole
    batch_invariant = False

    @property
    def half_attention(self) -> bool:
        """Attention as llama.cpp computes it by default (no flash attention): K and V cached in f16,
        Q and the softmax probabilities rounded to f16 before their products (f32 accumulation)."""
        return self.activations == "llama.cpp"

    def round_kv(self, x):
        """What the KV cache stores: f16-rounded keys/values in llama.cpp mode (its cache type)."""
        if not self.half_attention:
            return x
        return np.asarray(x, F32).astype(np.float16).astype(F32)

    # --- the forward pass's plumbing: inputs, KV cache, routing (host arrays on the CPU backends)

    def concat_rows(self, parts) -> np.ndarray:
        """Arrays stacked along the first axis (the rows of several sequences in one batched pass)."""
        return parts[0] if len(parts) == 1 else np.concatenate([np.asarray(a) for a in parts])

    def ints(self, x, slot: str | None = None) -> np.ndarray:
        """int32 inputs of a forward pass (token ids, positions); `slot` matters to graph capture only."""
        return np.ascontiguousarray(x, dtype=np.int32)

    def new_kv(self, n_ctx: int, n_head_kv: int, head_dim: int) -> np.ndarray:
        return np.zeros((n_ctx, n_head_kv, head_dim), F32)

    def kv_store(self, cache: np.ndarray, x, pos) -> np.ndarray:
        """Write x (n_tok, n_head_kv, d) at rows pos (consecutive) of the cache, rounded as the cache
        stores values; return the rows 0..last written (what attention may see)."""
        pos = np.asarray(pos).reshape(-1)
        start = int(pos[0])
        end = start + len(pos)
        if len(pos) > 1 and not np.array_equal(pos, np.arange(start, end)):
            raise ValueError("kv_store: the CPU cache takes consecutive positions")
        cache[start:end] = self._as_stored(cache, x)
        return cache[:end]

    # attention(..., spans=) takes the sequences of a batch in one pooled cache (engine/batching.py)
    attention_spans = True

    def kv_scatter(self, cache: np.ndarray, x, rows) -> None:
        """Write x (n_tok, n_head_kv, d) at cache rows `rows` (any), rounded as kv_store rounds: the
        tokens of several sequences of one batch into their regions of a pooled cache."""
        cache[np.asarray(rows).reshape(-1)] = self._as_stored(cache, x)

    def _as_stored(self, cache: np.ndarray, x) -> np.ndarray:
        """x as a write into `cache` needs it: an f16 cache (the Numba backend's) rounds by itself as it
        stores (NumPy's cast: to nearest even, as F16C; tests/test_kv_half.py), a float32 one takes
        `round_kv`'s values."""
        x = np.asarray(x, F32)
        return x if cache.dtype == np.float16 else self.round_kv(x)

    def moe_route(self, logits, n_used: int, gating: str = "softmax", norm: bool = True):
        """Choose `n_used` experts per token: (ids int32 (n_tok, k), weights f32 (n_tok, k)).

        gating "softmax" (Mixtral, Qwen3-MoE; llama.cpp build_moe_ffn with SOFTMAX gating): softmax
        over all router logits, top-k probabilities, renormalised when `norm`. "softmax_weight"
        (gpt-oss): top-k of the raw logits, softmax over the chosen. Ties go to the lower id."""
        logits = np.asarray(logits, F32)
        if gating == "softmax":
            probs = np.asarray(self.softmax(logits))
            ids = np.argsort(-probs, axis=-1, kind="stable")[:, :n_used].astype(np.int32)
            w = np.take_along_axis(probs, ids, axis=-1)
            if norm:
                w = w / w.sum(axis=-1, keepdims=True)
            return ids, w.astype(F32)
        if gating == "softmax_weight":
            ids = np.argsort(-logits, axis=-1, kind="stable")[:, :n_used].astype(np.int32)
            return ids, np.asarray(self.softmax(np.take_along_axis(logits, ids, axis=-1)), F32)
        raise ValueError(f"unknown gating {gating!r} (softmax | softmax_weight)")

    def moe_combine(self, d, weights) -> np.ndarray:
        """sum over slots u of weights[t, u] * d[t, u, :]: (n_tok, n_used, n) -> (n_tok, n)."""
        return (np.asarray(d, F32) * np.asarray(weights, F32)[:, :, None]).sum(axis=1)

    def softcap(self, x, cap: float) -> np.ndarray:
        """tanh(x / cap) * cap (Gemma's logit soft-capping)."""
        return np.tanh(np.asarray(x, F32) / F32(cap)) * F32(cap)

    def rms_norm(self, x, weight, eps: float):
        x = np.asarray(x, F32)
        n = x.shape[-1]
        ssum = np.sum((x * x).astype(np.float64), axis=-1, keepdims=True)
        mean = (ssum / n).astype(F32)
        scale = F32(1.0) / np.sqrt(mean + F32(eps))
        y = x * scale
        if weight is not None:
            y = y * np.asarray(weight, F32)
        return y

    def rope(self, x, positions, p: RopeParams):
        x = np.asarray(x, F32)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[:, None, :]
        check_rope(x.shape, p)
        half = p.n_dims // 2
        cos, sin = rope_cos_sin(positions, p)
        if cos.shape[0] != x.shape[0]:
            raise ValueError(f"rope: {cos.shape[0]} positions for {x.shape[0]} tokens")
        cos, sin = cos[:, None, :], sin[:, None, :]
        out = x.copy()
        if p.mode == "normal":
            x0, x1 = x[..., 0 : p.n_dims : 2], x[..., 1 : p.n_dims : 2]
            out[..., 0 : p.n_dims : 2] = x0 * cos - x1 * sin
            out[..., 1 : p.n_dims : 2] = x0 * sin + x1 * cos
        else:
            x0, x1 = x[..., :half], x[..., half : p.n_dims]
            out[..., :half] = x0 * cos - x1 * sin
            out[..., half : p.n_dims] = x0 * sin + x1 * cos
        return out[:, 0, :] if squeeze else out

    def softmax(self, x):
        x = np.asarray(x, F32)
        m = np.max(x, axis=-1, keepdims=True)
        e = np.exp(x - m)
        s = np.sum(e.astype(np.float64), axis=-1, keepdims=True)
        return e * (1.0 / s).astype(F32)

    def silu(self, x):
        x = np.asarray(x, F32)
        with np.errstate(over="ignore"):
            return x / (F32(1.0) + np.exp(-x))

    def gelu(self, x):
        x = np.asarray(x, F32)
        with np.errstate(over="ignore", invalid="ignore"):
            y = GELU_F16_TABLE[x.astype(np.float16).view(np.uint16)]
        y = np.where(x >= F32(10.0), x, y)
        return np.where(x <= F32(-10.0), F32(0.0), y).astype(F32)

    def gelu_tanh(self, x):
        with np.errstate(over="ignore", invalid="ignore"):
            return _gelu_tanh_f32(x)

    def swiglu(self, gate, up):
        return self.silu(gate) * np.asarray(up, F32)

    def geglu(self, gate, up):
        return self.gelu(gate) * np.asarray(up, F32)

    def swiglu_oai(self, gate, up, alpha: float, limit: float):
        """gpt-oss's clamped SwiGLU, as ggml_swiglu_oai: x = min(gate, limit), y = clamp(up, +-limit),
        x * sigmoid(alpha x) * (y + 1)."""
        x = np.minimum(np.asarray(gate, F32), F32(limit))
        y = np.clip(np.asarray(up, F32), F32(-limit), F32(limit))
        with np.errstate(over="ignore"):
            return (x / (F32(1.0) + np.exp(F32(alpha) * -x))) * (y + F32(1.0))

    def attention(self, q, k, v, q_pos, *, scale: float, window: int = 0, sinks=None, kv_pos=None,
                  softcap: float = 0.0, spans=None):
        q, k, v = (np.asarray(a, F32) for a in (q, k, v))
        check_attention(q, k, v)
        half = self.half_attention
        if half:  # ggml without flash attention: f16 Q and probabilities (K, V stored in f16: round_kv)
            q = q.astype(np.float16).astype(F32)
        n_tok, n_head, _ = q.shape
        n_kv, n_head_kv, dv = v.shape
        group = n_head // n_head_kv
        q_pos = np.asarray(q_pos, np.int64).reshape(-1)
        kv_pos = np.arange(n_kv, dtype=np.int64) if kv_pos is None else np.asarray(kv_pos, np.int64).reshape(-1)
        sk = None if sinks is None else np.asarray(sinks, F32).reshape(n_head)
        vis = attention_mask(q_pos, kv_pos, int(window or 0))
        if spans is not None:
            lo, hi = check_spans(spans, n_tok, n_kv)
            rows = np.arange(n_kv)
            vis &= (rows[None, :] >= lo[:, None]) & (rows[None, :] < hi[:, None])
        out = np.empty((n_tok, n_head, dv), F32)
        kt = k.transpose(1, 2, 0)                      # (n_head_kv, d, n_kv)
        vt = v.transpose(1, 0, 2)                      # (n_head_kv, n_kv, dv)
        block = max(1, (1 << 22) // max(1, n_head * n_kv))   # bound the score matrix memory
        for t0 in range(0, n_tok, block):
            t1 = min(n_tok, t0 + block)
            # (tb, n_head, d) -> (n_head_kv, group*tb, d): query head h = g*group + r uses kv head g
            qg = q[t0:t1].reshape(t1 - t0, n_head_kv, group, -1).transpose(1, 2, 0, 3)
            qg = qg.reshape(n_head_kv, group * (t1 - t0), -1)
            s = qg @ kt                                # (n_head_kv, group*tb, n_kv)
            if softcap:
                s = np.tanh((s * (F32(1.0) / F32(softcap))).astype(np.float64)).astype(F32) * F32(softcap)
            s = s * F32(scale)
            s = s.reshape(n_head, t1 - t0, n_kv)
            s = np.where(vis[None, t0:t1], s, F32(-np.inf))
            m = np.max(s, axis=-1, keepdims=True) if n_kv else np.full((n_head, t1 - t0, 1), -np.inf, F32)
            if sk is not None:
                m = np.maximum(m, sk[:, None, None])
            m = np.where(np.isfinite(m), m, F32(0.0))
            e = np.exp(s - m)
            ssum = np.sum(e.astype(np.float64), axis=-1, keepdims=True)
            if sk is not None:
                ssum = ssum + np.exp(sk[:, None, None] - m).astype(np.float64)
            with np.errstate(divide="ignore"):
                inv = np.where(ssum > 0, 1.0 / ssum, 0.0).astype(F32)
            pr = e * inv
            if half:
                pr = pr.astype(np.float16).astype(F32)
            pr = pr.reshape(n_head_kv, group * (t1 - t0), n_kv)
            o = (pr @ vt).reshape(n_head_kv, group, t1 - t0, dv)
            out[t0:t1] = o.transpose(2, 0, 1, 3).reshape(t1 - t0, n_head, dv)
        return out


__all__ = ["GELU_F16_TABLE", "NumpyOps", "attention_mask", "check_spans", "rope_corr_dims", "rope_cos_sin", "rope_scalars"]
