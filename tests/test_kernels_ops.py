"""Elementwise ops and attention: the NumPy reference (kernels/ops_numpy.py) against independent
straightforward formulas written from ggml's CPU code, then the Numba kernels against the reference.

ggml sources the formulas follow (ggml-org/ggml, mirrored in llama.cpp under ggml/src/):
src/ggml-cpu/ops.cpp (ggml_compute_forward_rms_norm_f32, soft_max_f32, rope_yarn, rope_yarn_ramp,
ggml_rope_cache_init, rotate_pairs), src/ggml.c (ggml_rope_yarn_corr_dims), src/ggml-cpu/vec.h
(ggml_gelu_f32, GGML_GELU_FP16, ggml_silu_f32); llama.cpp src/llama-hparams.h (is_masked_swa).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels.base import RopeParams
from kernels.ops_numpy import NumpyOps, attention_mask, rope_corr_dims, rope_scalars

F32 = np.float32
REF = NumpyOps()


@pytest.fixture(scope="module")
def fast():
    ops = pytest.importorskip("kernels.numba_cpu.ops")
    return ops.NumbaOps()


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(r, *shape, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(F32)


def assert_rel(got, want, rtol=1e-5):
    """Relative error below rtol, against the largest magnitude of `want` (outputs near zero are
    compared at that absolute scale)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------------------------------------
# (1) the reference against independent formulas


def test_rms_norm_formula():
    r = rng(1)
    for shape in [(576,), (3, 576), (2, 5, 64)]:
        x = randn(r, *shape, scale=3.0)
        w = randn(r, shape[-1])
        x64 = x.astype(np.float64)
        norm = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + 1e-6)
        assert_rel(REF.rms_norm(x, w, 1e-6), norm * w, 1e-6)
        assert_rel(REF.rms_norm(x, None, 1e-6), norm, 1e-6)
    # eps dominates a zero row: y = 0, no NaN
    assert np.all(REF.rms_norm(np.zeros((2, 8), F32), None, 1e-5) == 0)


def test_rms_norm_rounding_like_ggml():
    """sum of f32 squares in double, mean cast to float, scale = 1.0f/sqrtf(mean+eps), (x*scale)*w."""
    x = randn(rng(2), 1000, scale=10.0)
    w = randn(rng(3), 1000)
    s = 0.0
    for v in x:
        s += float(F32(v) * F32(v))
    mean = F32(s / 1000)
    scale = F32(1.0) / F32(math.sqrt(float(mean + F32(1e-5))))
    np.testing.assert_array_equal(REF.rms_norm(x, w, 1e-5), (x * scale) * w)


def _f32(v):
    return F32(v)


def rope_loop(x, positions, p: RopeParams):
    """ggml_compute_forward_rope_flt written out per element, with C float semantics (np.float32
    scalars; cosf/sinf/logf/powf as correctly rounded double results)."""
    n_tok, n_head, hd = x.shape
    n_dims = p.n_dims
    theta_scale = _f32(float(_f32(p.freq_base)) ** float(_f32(-2.0) / _f32(n_dims)))

    def corr_dim(beta):
        return _f32(n_dims) * _f32(math.log(float(_f32(p.n_ctx_orig) / (_f32(beta) * _f32(2) * _f32(math.pi))))) \
            / (_f32(2) * _f32(math.log(float(_f32(p.freq_base)))))

    if p.n_ctx_orig > 0:
        low = max(_f32(0), _f32(math.floor(corr_dim(p.beta_fast))))
        high = min(_f32(n_dims - 1), _f32(math.ceil(corr_dim(p.beta_slow))))
    else:
        low, high = _f32(0), _f32(-np.inf)
    out = x.copy()
    for t in range(n_tok):
        theta = _f32(int(positions[t]))
        cache = []
        for i in range(n_dims // 2):
            ff = _f32(1) if p.freq_factors is None else _f32(p.freq_factors[i])
            theta_extrap = theta / ff
            theta_interp = _f32(p.freq_scale) * theta_extrap
            th = theta_interp
            mscale = _f32(p.attn_factor)
            if p.ext_factor != 0:
                y = (_f32(i) - low) / max(_f32(0.001), _f32(high - low))
                ramp_mix = (_f32(1) - min(_f32(1), max(_f32(0), y))) * _f32(p.ext_factor)
                th = theta_interp * (_f32(1) - ramp_mix) + theta_extrap * ramp_mix
                mscale = mscale * (_f32(1) + _f32(0.1) * _f32(math.log(float(_f32(1) / _f32(p.freq_scale)))))
            cache.append((_f32(math.cos(float(th))) * mscale, _f32(math.sin(float(th))) * mscale))
            theta = theta * theta_scale
        for h in range(n_head):
            for i in range(n_dims // 2):
                c, s = cache[i]
                i0, i1 = (2 * i, 2 * i + 1) if p.mode == "normal" else (i, i + n_dims // 2)
                x0, x1 = x[t, h, i0], x[t, h, i1]
                out[t, h, i0] = x0 * c - x1 * s
                out[t, h, i1] = x0 * s + x1 * c
    return out


def rope_math(x, positions, p: RopeParams):
    """The rope of formats.md §3.2 in double precision: theta = pos * base**(-2i/n_dims) / ff."""
    n_dims, half = p.n_dims, p.n_dims // 2
    i = np.arange(half, dtype=np.float64)
    ff = np.ones(half) if p.freq_factors is None else np.asarray(p.freq_factors, np.float64)[:half]
    theta_extrap = np.asarray(positions, np.float64)[:, None] * p.freq_base ** (-2 * i / n_dims) / ff
    theta_interp = p.freq_scale * theta_extrap
    mscale = p.attn_factor
    if p.ext_factor != 0:
        def corr(b):
            return n_dims * math.log(p.n_ctx_orig / (b * 2 * math.pi)) / (2 * math.log(p.freq_base))
        low, high = max(0, math.floor(corr(p.beta_fast))), min(n_dims - 1, math.ceil(corr(p.beta_slow)))
        mix = (1 - np.clip((i - low) / max(0.001, high - low), 0, 1)) * p.ext_factor
        theta = theta_interp * (1 - mix) + theta_extrap * mix
        mscale *= 1 + 0.1 * math.log(1 / p.freq_scale)
    else:
        theta = theta_interp
    c, s = (np.cos(theta) * mscale)[:, None, :], (np.sin(theta) * mscale)[:, None, :]
    x = x.astype(np.float64)
    out = x.copy()
    if p.mode == "normal":
        sl0, sl1 = slice(0, n_dims, 2), slice(1, n_dims, 2)
    else:
        sl0, sl1 = slice(0, half), slice(half, n_dims)
    out[..., sl0] = x[..., sl0] * c - x[..., sl1] * s
    out[..., sl1] = x[..., sl0] * s + x[..., sl1] * c
    return out


def _llama3_freq_factors(n_dims, base=500000.0, factor=8.0, low_ff=1.0, high_ff=4.0, orig=8192):
    """rope_freqs as llama.cpp's converter computes it for llama 3.1 rope scaling."""
    out = []
    for i in range(n_dims // 2):
        freq = 1.0 / base ** (2 * i / n_dims)
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high_ff:
            out.append(1.0)
        elif wavelen > orig / low_ff:
            out.append(factor)
        else:
            smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, F32)


ROPE_CASES = {
    "llama-normal": RopeParams(n_dims=64, freq_base=10000.0),
    "neox": RopeParams(n_dims=64, freq_base=1e6, mode="neox"),
    "partial-normal": RopeParams(n_dims=32, freq_base=10000.0),
    "partial-neox": RopeParams(n_dims=16, freq_base=10000.0, mode="neox"),
    "linear-scale": RopeParams(n_dims=64, freq_base=1e6, freq_scale=0.125, mode="neox"),
    "llama3-freq-factors": RopeParams(n_dims=64, freq_base=500000.0, freq_factors=_llama3_freq_factors(64)),
    "gpt-oss-yarn": RopeParams(n_dims=64, freq_base=150000.0, freq_scale=1 / 32, mode="neox", ext_factor=1.0,
                               n_ctx_orig=4096),
    "yarn-attn-factor-normal": RopeParams(n_dims=48, freq_base=10000.0, freq_scale=0.25, ext_factor=0.7,
                                          attn_factor=0.9, beta_fast=16.0, beta_slow=2.0, n_ctx_orig=2048),
}


@pytest.mark.parametrize("name", list(ROPE_CASES))
def test_rope_against_loop_and_math(name):
    p = ROPE_CASES[name]
    r = rng(4)
    x = randn(r, 3, 2, 64)
    pos = np.array([0, 7, 45])
    got = REF.rope(x, pos, p)
    np.testing.assert_allclose(got, rope_loop(x, pos, p), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, rope_math(x, pos, p), rtol=0, atol=5e-5)
    np.testing.assert_array_equal(got[..., p.n_dims:], x[..., p.n_dims:])   # pass-through dims


def test_rope_large_positions_follow_float32_running_product():
    """At large positions ggml's float32 `theta *= theta_scale` drifts from pos*base^(-2i/n) by
    ~1e-4 rad; the reference must follow the float32 recurrence, not the exact angle."""
    p = RopeParams(n_dims=128, freq_base=10000.0, mode="neox")
    x = randn(rng(5), 2, 1, 128)
    pos = np.array([30001, 131071])
    got = REF.rope(x, pos, p)
    np.testing.assert_allclose(got, rope_loop(x, pos, p), rtol=0, atol=2e-6)
    assert np.max(np.abs(got - rope_math(x, pos, p))) > 1e-5   # the drift is real


def test_rope_modes_and_invariants():
    r = rng(6)
    x = randn(r, 5, 3, 32)
    pos = np.arange(10, 15)
    # NORMAL on interleaved pairs == NEOX on the same pairs laid out as halves
    perm = np.concatenate([np.arange(0, 32, 2), np.arange(1, 32, 2)])
    normal = REF.rope(x, pos, RopeParams(n_dims=32))
    neox = REF.rope(x[..., perm], pos, RopeParams(n_dims=32, mode="neox"))
    np.testing.assert_allclose(normal[..., perm], neox, rtol=0, atol=1e-6)
    # position 0 is the identity; rotations keep pair norms
    np.testing.assert_array_equal(REF.rope(x, np.zeros(5, int), RopeParams(n_dims=32)), x)
    pairs = normal.reshape(5, 3, 16, 2)
    np.testing.assert_allclose(np.hypot(pairs[..., 0], pairs[..., 1]),
                               np.hypot(*x.reshape(5, 3, 16, 2).transpose(3, 0, 1, 2)), rtol=1e-5)
    # q.k after rope depends on the position difference only
    q, k = randn(r, 1, 1, 32), randn(r, 1, 1, 32)
    p = RopeParams(n_dims=32, mode="neox")
    d1 = float(np.sum(REF.rope(q, [9], p) * REF.rope(k, [4], p)))
    d2 = float(np.sum(REF.rope(q, [105], p) * REF.rope(k, [100], p)))
    assert abs(d1 - d2) < 1e-4
    # a 2-D (n_tok, head_dim) input is one head
    np.testing.assert_array_equal(REF.rope(x[:, 0], pos, RopeParams(n_dims=32)), normal[:, 0])
    with pytest.raises(ValueError):
        REF.rope(x, pos, RopeParams(n_dims=34))
    with pytest.raises(ValueError):
        REF.rope(x, pos, RopeParams(n_dims=32, mode="vision"))


def test_rope_yarn_constants():
    """gpt-oss: corr dims 8.09/17.40 rounded to 8/18 (formats.md §3.6); mscale 1 + 0.1 ln 32."""
    assert rope_corr_dims(64, 4096, 150000.0, 32.0, 1.0) == (8.0, 18.0)
    p = ROPE_CASES["gpt-oss-yarn"]
    _, _, _, mscale, low, high = rope_scalars(p)
    assert (low, high) == (8.0, 18.0)
    assert abs(mscale - (1 + 0.1 * math.log(32))) < 1e-6
    # clamped to [0, n_dims-1]
    assert rope_corr_dims(64, 10**9, 10000.0, 32.0, 1.0)[1] == 63.0
    # pairs below `low` extrapolate (theta = theta_extrap), above `high` interpolate (freq_scale*theta)
    x = np.zeros((1, 1, 64), F32)
    x[0, 0, :32] = 1.0
    y = REF.rope(x, [1000], p)[0, 0]
    theta_scale = 150000.0 ** (-2 / 64)
    for i, th in [(3, 1000 * theta_scale**3), (25, 1000 * theta_scale**25 / 32)]:
        assert abs(y[i] - math.cos(th) * mscale) < 2e-3 and abs(y[i + 32] - math.sin(th) * mscale) < 2e-3


def test_softmax_silu_gelu_formulas():
    r = rng(7)
    x = randn(r, 4, 37, scale=4.0)
    x[1, 3] = -np.inf
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    assert_rel(REF.softmax(x), e / e.sum(-1, keepdims=True), 1e-6)
    assert REF.softmax(x)[1, 3] == 0
    assert_rel(REF.silu(x[0]), x64[0] / (1 + np.exp(-x64[0])), 1e-6)
    g = np.linspace(-12, 12, 20001).astype(F32)
    g64 = g.astype(np.float64)
    tanh_gelu = 0.5 * g64 * (1 + np.tanh(math.sqrt(2 / math.pi) * g64 * (1 + 0.044715 * g64**2)))
    assert_rel(REF.gelu_tanh(g), tanh_gelu, 1e-6)
    # ggml's CPU gelu: fp16 table inside (-10, 10), identity above, 0 below
    got = REF.gelu(g)
    inside = np.abs(g) < 10
    np.testing.assert_allclose(got[inside], tanh_gelu[inside], rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(got[g >= 10], g[g >= 10])
    np.testing.assert_array_equal(got[g <= -10], 0)
    # inside: fp16(ggml_gelu_f32(fp16(x))), ggml_gelu_f32 in float32 scalars as vec.h writes it
    for xv, yv in zip(g[inside][::7], got[inside][::7]):
        h = F32(np.float16(xv))
        inner = F32(0.79788456080286535587989211986876) * h * (F32(1.0) + F32(0.044715) * h * h)
        want = F32(0.5) * h * (F32(1.0) + F32(math.tanh(float(inner))))
        assert yv == F32(np.float16(want)), xv
    up = randn(r, 20001)
    np.testing.assert_array_equal(REF.swiglu(g, up), REF.silu(g) * up)
    np.testing.assert_array_equal(REF.geglu(g, up), REF.gelu(g) * up)


def attention_brute(q, k, v, q_pos, scale, window=0, sinks=None, kv_pos=None):
    """Loops and an explicit mask matrix, in double precision."""
    n_tok, n_head, _ = q.shape
    n_kv, n_head_kv, dv = v.shape
    kv_pos = np.arange(n_kv) if kv_pos is None else np.asarray(kv_pos)
    mask = np.zeros((n_tok, n_kv), bool)
    for t in range(n_tok):
        for j in range(n_kv):
            visible = 0 <= kv_pos[j] <= q_pos[t]
            if window > 0 and q_pos[t] - kv_pos[j] >= window:   # llama_hparams::is_masked_swa, STANDARD
                visible = False
            mask[t, j] = visible
    out = np.zeros((n_tok, n_head, dv))
    for t in range(n_tok):
        for h in range(n_head):
            g = h // (n_head // n_head_kv)
            s = [float(np.dot(q[t, h].astype(np.float64), k[j, g].astype(np.float64))) * scale
                 for j in range(n_kv) if mask[t, j]]
            rows = [v[j, g].astype(np.float64) for j in range(n_kv) if mask[t, j]]
            logits = s + ([float(sinks[h])] if sinks is not None else [])
            if not logits:
                continue
            m = max(logits)
            den = sum(math.exp(z - m) for z in logits)
            for z, row in zip(s, rows):
                out[t, h] += math.exp(z - m) / den * row
    return out


ATTN_CASES = [
    # (n_tok, n_head, n_head_kv, head_dim, n_kv, window, sinks, kv_pos kind)
    (1, 4, 4, 16, 1, 0, False, "arange"),
    (1, 9, 3, 64, 23, 0, False, "arange"),
    (7, 9, 3, 64, 23, 0, False, "arange"),
    (7, 8, 1, 32, 30, 5, False, "arange"),
    (7, 8, 2, 32, 30, 4, True, "arange"),
    (5, 6, 2, 16, 12, 0, True, "ring"),
    (3, 4, 2, 8, 10, 3, False, "ring"),
]


def _kv_positions(kind, n_kv, last):
    if kind == "arange":
        return np.arange(last - n_kv + 1, last + 1)
    # a ring buffer: positions out of order, two empty slots (-1)
    pos = np.arange(last - n_kv + 3, last + 1)
    pos = np.concatenate([pos, [-1, -1]])
    return np.roll(pos, 4)


@pytest.mark.parametrize("case", ATTN_CASES, ids=[str(c) for c in ATTN_CASES])
def test_attention_brute_force(case):
    n_tok, n_head, n_head_kv, hd, n_kv, window, with_sinks, kind = case
    r = rng(8)
    q, k, v = randn(r, n_tok, n_head, hd), randn(r, n_kv, n_head_kv, hd), randn(r, n_kv, n_head_kv, hd)
    last = 40
    q_pos = np.arange(last - n_tok + 1, last + 1)
    kv_pos = _kv_positions(kind, n_kv, last)
    sinks = randn(r, n_head) if with_sinks else None
    scale = 1 / math.sqrt(hd)
    got = REF.attention(q, k, v, q_pos, scale=scale, window=window, sinks=sinks, kv_pos=kv_pos)
    assert_rel(got, attention_brute(q, k, v, q_pos, scale, window, sinks, kv_pos), 2e-6)


def test_attention_window_boundary():
    """Standard SWA: a query at position p sees exactly p-window+1 .. p (llama-hparams.h:
    masked iff p1 - p0 >= n_swa)."""
    n_kv, window = 12, 4
    v = np.eye(n_kv, dtype=F32)[:, None, :]                    # value j = one-hot(j)
    k = np.zeros((n_kv, 1, n_kv), F32)                          # equal scores everywhere
    q = np.zeros((n_kv, 2, n_kv), F32)
    out = REF.attention(q, k, v, np.arange(n_kv), scale=1.0, window=window)
    for p in range(n_kv):
        seen = set(np.nonzero(out[p, 0] > 0)[0])
        assert seen == set(range(max(0, p - window + 1), p + 1))
        np.testing.assert_allclose(out[p, 1, sorted(seen)], 1 / len(seen), rtol=1e-6)
    m = attention_mask(np.array([10]), np.arange(12), 4)
    assert m[0].tolist() == [j in (7, 8, 9, 10) for j in range(12)]
    assert attention_mask(np.array([5]), np.array([5, 6, -1, 0]), 1)[0].tolist() == [True, False, False, False]


def test_attention_sinks_and_degenerate_rows():
    r = rng(9)
    q, k, v = randn(r, 1, 2, 8), randn(r, 1, 1, 8), randn(r, 1, 1, 8)
    s = float(np.dot(q[0, 0], k[0, 0])) * 0.5
    sinks = np.array([1.5, -np.inf], F32)
    out = REF.attention(q, k, v, [0], scale=0.5, sinks=sinks)
    np.testing.assert_allclose(out[0, 0], v[0, 0] * math.exp(s) / (math.exp(s) + math.exp(1.5)), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], v[0, 0], rtol=1e-6)     # a -inf sink is no sink
    big = REF.attention(q, k, v, [0], scale=0.5, sinks=np.array([80.0, 80.0], F32))
    assert np.max(np.abs(big)) < 1e-20
    # a query that sees no key: zeros (with or without a sink), never NaN
    none = REF.attention(q, k, v, [3], scale=0.5, kv_pos=[5])
    assert np.all(none == 0)
    assert np.all(REF.attention(q, k, v, [3], scale=0.5, kv_pos=[5], sinks=sinks) == 0)
    with pytest.raises(ValueError):
        REF.attention(randn(r, 1, 5, 8), randn(r, 3, 2, 8), randn(r, 3, 2, 8), [2], scale=1.0)


# ------------------------------------------------------------------------------------------------
# (2) the Numba kernels against the reference


@pytest.mark.parametrize("shape", [(1, 576), (7, 576), (7, 9, 64), (64, 2048), (1, 1), (3, 5)])
def test_numba_rms_norm(fast, shape):
    r = rng(10)
    x = randn(r, *shape, scale=2.0)
    w = randn(r, shape[-1])
    assert_rel(fast.rms_norm(x, w, 1e-6), REF.rms_norm(x, w, 1e-6))
    assert_rel(fast.rms_norm(x, None, 1e-5), REF.rms_norm(x, None, 1e-5))
    assert fast.rms_norm(x, w, 1e-6).shape == shape


@pytest.mark.parametrize("name", list(ROPE_CASES))
@pytest.mark.parametrize("n_tok,n_head,head_dim", [(1, 9, 64), (7, 3, 128), (40, 9, 128), (2, 4, 256)])
def test_numba_rope(fast, name, n_tok, n_head, head_dim):
    p = ROPE_CASES[name]
    r = rng(11)
    x = randn(r, n_tok, n_head, head_dim)
    pos = np.sort(r.integers(0, 5000, n_tok))
    got = fast.rope(x, pos, p)
    assert_rel(got, REF.rope(x, pos, p))
    assert not np.shares_memory(got, x)


def test_numba_rope_noncontiguous_input(fast):
    r = rng(12)
    qkv = randn(r, 7, 3 * 4 * 64).reshape(7, 3, 4, 64)
    q = qkv[:, 0]
    p = ROPE_CASES["neox"]
    assert_rel(fast.rope(q, np.arange(7), p), REF.rope(q, np.arange(7), p))
    assert_rel(fast.rope(q[:, 0], np.arange(7), p), REF.rope(q[:, 0], np.arange(7), p))


@pytest.mark.parametrize("shape", [(1, 7), (7, 33), (16, 4096), (2, 3, 50)])
def test_numba_softmax(fast, shape):
    x = randn(rng(13), *shape, scale=5.0)
    x.reshape(-1, shape[-1])[0, 0] = -np.inf
    assert_rel(fast.softmax(x), REF.softmax(x))


@pytest.mark.parametrize("shape", [(1,), (7, 1536), (64, 4096)])
def test_numba_activations(fast, shape):
    r = rng(14)
    x = randn(r, *shape, scale=4.0)
    x.reshape(-1)[:3] = [-100.0, 95.0, 0.0][: x.size]
    up = randn(r, *shape)
    assert_rel(fast.silu(x), REF.silu(x))
    assert_rel(fast.swiglu(x, up), REF.swiglu(x, up))
    np.testing.assert_array_equal(fast.gelu(x), REF.gelu(x))
    np.testing.assert_array_equal(fast.geglu(x, up), REF.geglu(x, up))


def test_numba_gelu_fp16_rounding_bit_exact(fast):
    """The fp16 conversion inside the gelu kernel: ties to even, subnormals, saturations."""
    r = rng(15)
    h = r.integers(0, 0x7BFF, 20000).astype(np.uint16)
    h = np.concatenate([h, h | 0x8000, np.arange(0, 0x500, dtype=np.uint16)])   # both signs, subnormals
    lo = h.view(np.float16).astype(F32)
    hi = (h + 1).astype(np.uint16).view(np.float16).astype(F32)
    mids = (lo + hi) / 2                                   # exact ties: round to the even neighbour
    edges = np.array([10.0, -10.0, 9.999999, -9.999999, 6.1035156e-05, 6.1035152e-05, 2.9802322e-08,
                      5.9604645e-08, 1e-9, -1e-9, 0.0, -0.0, 65519.0, -65520.0, 1e30, -1e30], F32)
    x = np.concatenate([lo, mids, np.nextafter(mids, F32(np.inf)), np.nextafter(mids, F32(-np.inf)), edges])
    x = x[np.isfinite(x)]
    np.testing.assert_array_equal(fast.gelu(x), REF.gelu(x))


ATTN_FAST_CASES = [
    # (n_tok, n_head, n_head_kv, head_dim, n_kv, window, sinks, kv_pos kind)
    (1, 9, 3, 64, 1, 0, False, "arange"),
    (1, 9, 3, 64, 600, 0, False, "arange"),
    (1, 9, 3, 64, 600, 128, True, "arange"),
    (7, 9, 3, 64, 40, 0, False, "arange"),
    (7, 4, 1, 256, 40, 16, False, "arange"),
    (7, 8, 8, 128, 33, 0, True, "arange"),
    (7, 6, 2, 128, 33, 5, True, "ring"),
    (1, 4, 1, 256, 1500, 0, False, "arange"),
    (64, 8, 2, 64, 96, 0, True, "arange"),
    (1, 9, 3, 64, 50, 0, False, "nothing-visible"),
    # 5 query heads a kv head (a 4-head block of the weighted sum, then 1) and 40 columns (16-column
    # blocks, then 8 one by one)
    (3, 10, 2, 40, 37, 0, True, "arange"),
]


@pytest.mark.parametrize("case", ATTN_FAST_CASES, ids=[str(c) for c in ATTN_FAST_CASES])
def test_numba_attention(fast, case):
    n_tok, n_head, n_head_kv, hd, n_kv, window, with_sinks, kind = case
    r = rng(16)
    q, k, v = randn(r, n_tok, n_head, hd), randn(r, n_kv, n_head_kv, hd), randn(r, n_kv, n_head_kv, hd)
    last = n_kv + 5
    q_pos = np.arange(last - n_tok + 1, last + 1)
    if kind == "nothing-visible":
        kv_pos = np.arange(1000, 1000 + n_kv)
    else:
        kv_pos = _kv_positions(kind, n_kv, last)
    sinks = randn(r, n_head) if with_sinks else None
    kw = dict(scale=1 / math.sqrt(hd), window=window, sinks=sinks, kv_pos=kv_pos)
    want = REF.attention(q, k, v, q_pos, **kw)
    assert_rel(fast.attention(q, k, v, q_pos, **kw), want)
    # default kv_pos (arange) and decode against the whole cache
    if kind == "arange":
        qp = np.arange(n_kv - n_tok, n_kv)
        assert_rel(fast.attention(q, k, v, qp, scale=0.1, window=window),
                   REF.attention(q, k, v, qp, scale=0.1, window=window))


@pytest.mark.parametrize("n_chunks", [2, 3, 7])
def test_numba_attention_split_kv(fast, monkeypatch, n_chunks):
    """The split-K path (partial max/sum/output per kv chunk, merged after) on any thread count."""
    r = rng(17)
    n_kv = 700
    q, k, v = randn(r, 1, 4, 64, scale=2.0), randn(r, n_kv, 1, 64), randn(r, n_kv, 1, 64)
    sinks = randn(r, 4)
    monkeypatch.setattr(type(fast), "_kv_chunks", lambda self, n_items, n_kv, parallel: n_chunks)
    for window, kv_pos in [(0, None), (100, None), (0, np.arange(n_kv) + 1000)]:
        kw = dict(scale=0.125, window=window, sinks=sinks, kv_pos=kv_pos)
        assert_rel(fast.attention(q, k, v, [n_kv - 1], **kw), REF.attention(q, k, v, [n_kv - 1], **kw))
        kw["sinks"] = None
        assert_rel(fast.attention(q, k, v, [n_kv - 1], **kw), REF.attention(q, k, v, [n_kv - 1], **kw))


@pytest.mark.parametrize("window", [0, 5])
def test_attention_softcap(fast, monkeypatch, window):
    """Gemma 2's attention soft-capping: each raw score q.k becomes cap*tanh(q.k/cap) before the scale
    (build_attn_mha without flash attention), in the reference and the Numba kernel (split-K too)."""
    r = rng(23)
    q, k, v = randn(r, 6, 4, 32, scale=2.0), randn(r, 20, 2, 32, scale=2.0), randn(r, 20, 2, 32)
    q_pos, cap, scale = np.arange(14, 20), 5.0, 0.5
    vis = attention_mask(q_pos, np.arange(20), window)
    want = np.zeros((6, 4, 32))
    for t in range(6):
        for h in range(4):
            s = cap * np.tanh(k[:, h // 2].astype(np.float64) @ q[t, h].astype(np.float64) / cap) * scale
            p = np.where(vis[t], np.exp(s - s[vis[t]].max()), 0.0)
            want[t, h] = p @ v[:, h // 2] / p.sum()
    got = REF.attention(q, k, v, q_pos, scale=scale, window=window, softcap=cap)
    assert_rel(got, want.astype(F32), 2e-6)
    assert not np.allclose(got, REF.attention(q, k, v, q_pos, scale=scale, window=window), atol=1e-2)
    assert_rel(fast.attention(q, k, v, q_pos, scale=scale, window=window, softcap=cap), got)
    monkeypatch.setattr(type(fast), "_kv_chunks", lambda self, n_items, n_kv, parallel: 3)
    assert_rel(fast.attention(q[-1:], k, v, q_pos[-1:], scale=scale, window=window, softcap=cap), got[-1:])


class _HalfNumpy(NumpyOps):
    activations = "llama.cpp"


@pytest.mark.parametrize("case", ATTN_CASES, ids=[str(c) for c in ATTN_CASES])
def test_attention_as_llama_cpp_rounds_q_and_probabilities_to_f16(case, fast):
    """ggml without flash attention: f16 K/V cache, Q and softmax probabilities rounded to f16."""
    n_tok, n_head, n_head_kv, hd, n_kv, window, with_sinks, kind = case
    r = rng(9)
    q, k, v = randn(r, n_tok, n_head, hd), randn(r, n_kv, n_head_kv, hd), randn(r, n_kv, n_head_kv, hd)
    q_pos = np.arange(40 - n_tok + 1, 41)
    kv_pos = _kv_positions(kind, n_kv, 40)
    sinks = randn(r, n_head) if with_sinks else None
    half = _HalfNumpy()
    fast = type("HalfNumba", (type(fast),), {"activations": "llama.cpp"})()
    k16, v16 = half.round_kv(k), half.round_kv(v)
    assert np.array_equal(k16, k.astype(np.float16).astype(np.float32))
    kw = dict(scale=1 / math.sqrt(hd), window=window, sinks=sinks, kv_pos=kv_pos)
    want = half.attention(q, k16, v16, q_pos, **kw)
    # by hand: f16 q, exact softmax, probabilities rounded to f16
    q16 = q.astype(np.float16).astype(np.float32)
    exact = REF.attention(q16, k16, v16, q_pos, **kw)
    assert_rel(want, exact, 2e-3)                 # f16 probabilities: within their rounding
    if n_kv > 1:
        assert not np.allclose(want, exact, rtol=1e-6, atol=0)
    # the scores' last bits depend on summation order, and a probability on an f16 rounding boundary
    # may then land one f16 step away: equal but for those few
    got = fast.attention(q, k16, v16, q_pos, **kw)
    assert_rel(got, want, 2e-3)
    assert np.mean(~np.isclose(got, want, rtol=2e-6, atol=2e-6 * np.abs(want).max())) < 0.05


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("window,with_sinks", [(0, False), (4, True)])
def test_attention_spans_are_each_sequence_alone(fast, half, window, with_sinks):
    """Three sequences in one pooled cache (regions of 16 rows, kv_pos their positions within it, stale
    rows past each sequence's end), one call with spans: each token gets bit for bit (Numba) what
    its sequence's own cache gives it, in a call of its own; the NumPy reference agrees to rounding.
    kv_scatter writes a batch's rows anywhere in the pool, rounded as kv_store rounds."""
    r = rng(31)
    n_head, n_head_kv, hd, n = 6, 2, 32, 16
    ends = [5, 12, 9]                             # positions filled in each region after this step
    new = [1, 3, 1]                               # this step's tokens of each: decode, chunk, decode
    mode = {"activations": "llama.cpp" if half else "f32"}
    be = type("SpansNumba", (type(fast),), mode)()
    ref = type("SpansNumpy", (NumpyOps,), mode)()
    pk, pv = be.new_kv(3 * n, n_head_kv, hd), be.new_kv(3 * n, n_head_kv, hd)
    be.kv_scatter(pk, randn(r, 3 * n, n_head_kv, hd), np.arange(3 * n))   # stale everywhere
    be.kv_scatter(pv, randn(r, 3 * n, n_head_kv, hd), np.arange(3 * n))
    assert np.array_equal(pk, be.round_kv(pk))
    kv_pos = np.tile(np.arange(n), 3)
    k_new, v_new = randn(r, sum(new), n_head_kv, hd), randn(r, sum(new), n_head_kv, hd)
    rows = np.concatenate([np.arange(s * n + e - m, s * n + e) for s, (e, m) in enumerate(zip(ends, new))])
    be.kv_scatter(pk, k_new, rows)
    be.kv_scatter(pv, v_new, rows)
    q = randn(r, sum(new), n_head, hd)
    q_pos = np.concatenate([np.arange(e - m, e) for e, m in zip(ends, new)])
    lo = np.repeat([s * n for s in range(3)], new)
    hi = np.repeat([s * n + e for s, e in enumerate(ends)], new)
    sinks = randn(r, n_head) if with_sinks else None
    kw = dict(scale=0.2, window=window, sinks=sinks)
    got = be.attention(q, pk, pv, q_pos, kv_pos=kv_pos, spans=(lo, hi), **kw)
    a = 0
    for s, (e, m) in enumerate(zip(ends, new)):
        alone = be.attention(q[a:a + m], pk[s * n:s * n + e], pv[s * n:s * n + e], q_pos[a:a + m], **kw)
        np.testing.assert_array_equal(got[a:a + m], alone)
        a += m
    assert_rel(ref.attention(q, pk, pv, q_pos, kv_pos=kv_pos, spans=(lo, hi), **kw), got, 2e-3 if half else 1e-5)
    with pytest.raises(ValueError, match="spans"):
        be.attention(q, pk, pv, q_pos, kv_pos=kv_pos, spans=(lo, hi + 3 * n), **kw)


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("name", ["llama-normal", "partial-neox", "llama3-freq-factors", "gpt-oss-yarn"])
@pytest.mark.parametrize("n_tok,q_scale", [(1, None), (1, 0.125), (5, None)])
def test_numba_rope_kv_store_is_rope_rope_and_two_stores(name, n_tok, q_scale, half):
    """The fused call (the decode path of engine/models/common.attend on the CPU) gives bit for bit what
    rope, rope, the q scaling and two kv_store calls give, and writes the same cache rows."""
    from kernels.numba_cpu.ops import NumbaOps

    ops = type("Ops", (NumbaOps,), {"activations": "llama.cpp" if half else "f32"})()
    assert ops.half_attention is half
    p, r = ROPE_CASES[name], rng(21)
    n_ctx, n_head, n_head_kv, hd = 16, 6, 2, 64
    q, k, v = randn(r, n_tok, n_head, hd), randn(r, n_tok, n_head_kv, hd), randn(r, n_tok, n_head_kv, hd)
    pos = np.arange(7, 7 + n_tok, dtype=np.int32)
    kc1, vc1 = ops.new_kv(n_ctx, n_head_kv, hd), ops.new_kv(n_ctx, n_head_kv, hd)
    kc2, vc2 = ops.new_kv(n_ctx, n_head_kv, hd), ops.new_kv(n_ctx, n_head_kv, hd)
    want_q = ops.rope(q, pos, p)
    if q_scale is not None:
        want_q = want_q * np.float32(q_scale)
    want_k, want_v = ops.kv_store(kc1, ops.rope(k, pos, p), pos), ops.kv_store(vc1, v, pos)
    got_q, got_k, got_v = ops.rope_kv_store(kc2, vc2, q, k, v, pos, p, q_scale)
    for got, want in ((got_q, want_q), (got_k, want_k), (got_v, want_v), (kc2, kc1), (vc2, vc1)):
        assert got.shape == want.shape and np.array_equal(got, want)
    assert np.shares_memory(got_k, kc2) and np.shares_memory(got_v, vc2)


def test_numba_rope_kv_store_rejects_what_kv_store_rejects():
    from kernels.numba_cpu.ops import NumbaOps

    ops, p, r = NumbaOps(), ROPE_CASES["llama-normal"], rng(22)
    kc, vc = ops.new_kv(4, 2, 64), ops.new_kv(4, 2, 64)
    q, k = randn(r, 2, 4, 64), randn(r, 2, 2, 64)
    with pytest.raises(ValueError, match="consecutive"):
        ops.rope_kv_store(kc, vc, q, k, k, np.array([0, 2]), p)
    with pytest.raises(ValueError, match="outside a cache of 4 rows"):
        ops.rope_kv_store(kc, vc, q, k, k, np.array([3, 4]), p)
    with pytest.raises(ValueError, match="positions for q, k, v"):
        ops.rope_kv_store(kc, vc, q, k, k, np.array([0]), p)
