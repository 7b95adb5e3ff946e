"""Device KV cache and attention (kernels/gpu/attention.py, src/attention.cl) against the NumPy reference.

Every test runs on each device backend found (`gpu_devices.backend_names()`: PoCL in CI, CUDA where
a GPU is) in both activation modes: "llama.cpp" (f16 cache, f16 Q and probabilities, as ggml without
flash attention) and "f32". The reference is `kernels.reference.NumpyBackend` in the same mode, fed
the cache as the device stores it (`round_kv`).

Bounds. f32 mode: relative 1e-5 of the largest output, as the Numba backend's tests. llama.cpp mode:
each probability is rounded to f16, so a last-bit difference in a score (dot-product order) may move
one probability by an f16 step: the largest error is bounded as the Numba test does (2e-3 of the
largest output), and the *mean* error must stay below 2e-6, which no missing rounding passes
(skipping the probability rounding alone gives a mean error above 1.5e-5 on these shapes).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from gpu_devices import backend_names, device_backend
from kernels.gpu.array import DArray
from kernels.reference import NumpyBackend

F32 = np.float32
MODES = ["llama.cpp", "f32"]


@functools.lru_cache(maxsize=None)
def reference(mode: str) -> NumpyBackend:
    return NumpyBackend(activations=mode)


@pytest.fixture(params=backend_names())
def name(request):
    return request.param


def randn(r, *shape, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(F32)


def assert_close(got, want, mode: str):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.isfinite(got))
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    if mode == "f32":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
        return
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * scale)
    assert np.mean(np.abs(got - want)) / scale < 2e-6


def ref_attention(mode, q, k, v, q_pos, **kw):
    ref = reference(mode)
    return ref.attention(q, ref.round_kv(k), ref.round_kv(v), q_pos, **kw)


CASES = [
    # (n_tok, n_head, n_head_kv, head_dim, first position, cache rows, window, sinks)
    (1, 9, 3, 64, 0, 64, 0, False),          # first token of a sequence
    (1, 9, 3, 64, 300, 512, 0, False),       # decode in the middle of a cache (SmolLM2's heads)
    (2, 8, 2, 64, 200, 300, 0, True),        # GQA 4, sinks
    (3, 4, 4, 17, 40, 50, 0, False),         # no GQA, odd head dim
    (4, 4, 1, 256, 700, 1024, 512, False),   # Gemma 3 270M's heads and window, many chunks
    (1, 8, 2, 64, 450, 600, 128, True),      # gpt-oss: window and sinks
    (2, 12, 1, 32, 90, 130, 0, True),        # 12 heads on one kv head: two head groups per kv head
    (7, 9, 3, 64, 20, 64, 0, False),         # prompts from here on (tiled kernel)
    (33, 4, 1, 256, 30, 100, 16, True),
    (33, 6, 2, 40, 0, 33, 5, False),
    (130, 8, 2, 64, 5, 200, 0, True),
    (130, 9, 3, 64, 100, 300, 64, False),
    (7, 80, 1, 64, 3, 12, 0, True),          # more heads than a tiled work-group holds rows
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_attention_matches_reference(name, mode, case):
    n_tok, n_head, n_head_kv, hd, start, n_kv, window, with_sinks = case
    be = device_backend(name, mode)
    r = np.random.default_rng(hash(case) % 2**32)
    q, k, v = randn(r, n_tok, n_head, hd, scale=2.0), randn(r, n_kv, n_head_kv, hd), randn(r, n_kv, n_head_kv, hd)
    sinks = randn(r, n_head) if with_sinks else None
    q_pos = np.arange(start, start + n_tok)
    kw = dict(scale=1 / math.sqrt(hd), window=window, sinks=sinks)
    want = ref_attention(mode, q, k, v, q_pos, **kw)
    out = be.attention(q, k, v, q_pos, **kw)              # host operands, converted to the cache type
    assert isinstance(out, DArray) and out.shape == (n_tok, n_head, hd)
    assert_close(be.to_numpy(out), want, mode)
    # device operands: f32 K/V arrays, positions and sinks already on the device
    dev = be.attention(be.asarray(q), be.asarray(k), be.asarray(v), be.ints(q_pos), scale=kw["scale"], window=window,
                       sinks=None if sinks is None else be.asarray(sinks))
    assert_close(be.to_numpy(dev), want, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_tok", [1, 3, 20])
def test_soft_capped_scores(name, mode, n_tok):
    """Gemma 2's attention soft-capping: cap * tanh(q.k / cap), then the scale (both kernels)."""
    be = device_backend(name, mode)
    r = np.random.default_rng(11)
    q, k, v = randn(r, n_tok, 8, 64, scale=3.0), randn(r, 60, 2, 64, scale=3.0), randn(r, 60, 2, 64)
    q_pos = np.arange(60 - n_tok, 60)
    kw = dict(scale=0.125, window=16, sinks=None, softcap=50.0)
    want = ref_attention(mode, q, k, v, q_pos, **kw)
    assert_close(be.to_numpy(be.attention(q, k, v, q_pos, **kw)), want, mode)
    plain = ref_attention(mode, q, k, v, q_pos, scale=0.125, window=16)
    assert np.abs(want - plain).max() > 0.1  # the cap matters at these magnitudes


@pytest.mark.parametrize("mode", MODES)
def test_key_and_value_dims_may_differ(name, mode):
    be = device_backend(name, mode)
    r = np.random.default_rng(3)
    for n_tok in (1, 9):
        q, k, v = randn(r, n_tok, 4, 64), randn(r, 40, 2, 64), randn(r, 40, 2, 32)
        kw = dict(scale=0.125, window=0, sinks=randn(r, 4))
        want = ref_attention(mode, q, k, v, np.arange(40 - n_tok, 40), **kw)
        assert_close(be.to_numpy(be.attention(q, k, v, np.arange(40 - n_tok, 40), **kw)), want, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_tok,start", [(1, 37), (3, 37), (20, 0), (20, 150)])
def test_kv_store_then_attention(name, mode, n_tok, start):
    """The forward pass's path: a prefix already stored, this step's rows written at positions held
    on the device, attention over the whole cache bounded by the query positions."""
    be = device_backend(name, mode)
    n_ctx, n_head, n_head_kv, hd = 256, 6, 2, 64
    r = np.random.default_rng(n_tok + start)
    kc, vc = be.new_kv(n_ctx, n_head_kv, hd), be.new_kv(n_ctx, n_head_kv, hd)
    assert kc.shape == (n_ctx, n_head_kv, hd) and kc.dtype == (np.float16 if mode == "llama.cpp" else np.float32)
    assert not np.any(be.to_numpy(kc))
    end = start + n_tok
    k, v = randn(r, end, n_head_kv, hd), randn(r, end, n_head_kv, hd)
    if start:
        assert be.kv_store(kc, be.asarray(k[:start]), be.ints(np.arange(start))) is kc
        be.kv_store(vc, v[:start], np.arange(start))                       # host rows and positions too
    pos = be.ints(np.arange(start, end))
    be.kv_store(kc, be.asarray(k[start:]), pos)
    be.kv_store(vc, be.asarray(v[start:]), pos)
    ref = reference(mode)
    stored = be.to_numpy(kc).astype(F32)
    np.testing.assert_array_equal(stored[:end], ref.round_kv(k))         # f16 rounding to nearest even, exactly
    assert not np.any(stored[end:])
    np.testing.assert_array_equal(be.to_numpy(vc).astype(F32)[:end], ref.round_kv(v))
    q = randn(r, n_tok, n_head, hd)
    sinks = randn(r, n_head)
    kw = dict(scale=0.125, window=0, sinks=sinks)
    got = be.to_numpy(be.attention(q, kc, vc, pos, **kw))
    full_k = np.zeros((n_ctx, n_head_kv, hd), F32)
    full_v = np.zeros((n_ctx, n_head_kv, hd), F32)
    full_k[:end], full_v[:end] = k, v
    assert_close(got, ref_attention(mode, q, full_k, full_v, np.arange(start, end), **kw), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_tok,window,with_sinks", [(1, 0, False), (1, 4, True), (2, 0, True), (7, 0, False),
                                                     (7, 6, True)])
def test_one_launch_sequence_replays_at_every_position(name, mode, n_tok, window, with_sinks):
    """What a CUDA graph needs: at positions 10, 11, 12 (and far into the cache) attention launches
    the same kernels with the same sizes and scalar arguments, reading the positions from one device
    buffer that is rewritten in place between calls; each result is right."""
    be = device_backend(name, mode)
    n_ctx, n_head, n_head_kv, hd = 300, 8, 2, 64
    r = np.random.default_rng(7)
    k, v = randn(r, n_ctx, n_head_kv, hd), randn(r, n_ctx, n_head_kv, hd)
    kc, vc = be.new_kv(n_ctx, n_head_kv, hd), be.new_kv(n_ctx, n_head_kv, hd)
    be.kv_store(kc, k, np.arange(n_ctx))
    be.kv_store(vc, v, np.arange(n_ctx))
    q = be.asarray(randn(r, n_tok, n_head, hd))
    sinks = be.asarray(randn(r, n_head)) if with_sinks else None
    pos_buf = be.ints(np.zeros(n_tok))
    launches = []
    real_launch = be.rt.launch

    def record(kname, kern, gsize, lsize, args):
        launches[-1].append((kname, gsize, lsize, [a.item() for a in args if isinstance(a, np.generic)]))
        real_launch(kname, kern, gsize, lsize, args)

    be.rt.launch = record
    try:
        for start in (10, 11, 12, 200, 300 - n_tok):
            qp = np.arange(start, start + n_tok, dtype=np.int32)
            be.rt.write(pos_buf.buf, qp)            # the position buffer refilled in place, as a replay does
            launches.append([])
            got = be.to_numpy(be.attention(q, kc, vc, pos_buf, scale=0.125, window=window, sinks=sinks))
            want = ref_attention(mode, be.to_numpy(q), k, v, qp, scale=0.125, window=window,
                                 sinks=None if sinks is None else be.to_numpy(sinks))
            assert_close(got, want, mode)
    finally:
        be.rt.launch = real_launch
    assert launches[0] and all(seq == launches[0] for seq in launches)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_tok", [1, 7])
def test_queries_that_see_nothing_get_zeros(name, mode, n_tok):
    """Beyond the cache's last row with a window (and before position 0), no key is visible: zeros,
    with or without a sink, never NaN; the other queries of the same block are unaffected."""
    be = device_backend(name, mode)
    r = np.random.default_rng(11)
    q, k, v = randn(r, n_tok, 4, 16), randn(r, 50, 2, 16), randn(r, 50, 2, 16)
    q_pos = np.full(n_tok, 100)
    q_pos[0] = -1
    if n_tok > 1:
        q_pos[1] = 45                                         # this one sees rows 36..45
    for sinks in (None, np.array([1.5, -np.inf, 0.0, 80.0], F32)):
        kw = dict(scale=0.25, window=10, sinks=sinks)
        got = be.to_numpy(be.attention(q, k, v, q_pos, **kw))
        want = ref_attention(mode, q, k, v, q_pos, **kw)
        assert np.all(got[q_pos != 45] == 0)
        assert_close(got, want, mode)


@pytest.mark.parametrize("mode", MODES)
def test_sink_limits(name, mode):
    """A -inf sink is no sink; a huge sink takes all the probability."""
    be = device_backend(name, mode)
    r = np.random.default_rng(12)
    for n_tok in (1, 5):
        q, k, v = randn(r, n_tok, 2, 8), randn(r, 6, 1, 8), randn(r, 6, 1, 8)
        q_pos = np.arange(6 - n_tok, 6)
        plain = be.to_numpy(be.attention(q, k, v, q_pos, scale=0.5))
        no_sink = be.to_numpy(be.attention(q, k, v, q_pos, scale=0.5, sinks=np.array([-np.inf, -np.inf], F32)))
        np.testing.assert_array_equal(no_sink, plain)
        big = be.to_numpy(be.attention(q, k, v, q_pos, scale=0.5, sinks=np.array([80.0, 80.0], F32)))
        assert np.max(np.abs(big)) < 1e-20


def test_errors(name):
    be = device_backend(name, "llama.cpp")
    r = np.random.default_rng(13)
    q, k, v = randn(r, 1, 4, 8), randn(r, 6, 2, 8), randn(r, 6, 2, 8)
    # kv_pos: a device cache's row j is position j; arange is accepted, anything else refused
    be.attention(q, k, v, [5], scale=1.0, kv_pos=np.arange(6))
    with pytest.raises(ValueError, match="kv_pos"):
        be.attention(q, k, v, [5], scale=1.0, kv_pos=np.arange(6) + 3)
    with pytest.raises(ValueError, match="multiple"):
        be.attention(randn(r, 1, 5, 8), k, v, [5], scale=1.0)
    with pytest.raises(ValueError, match="up to 256"):
        be.attention(randn(r, 1, 2, 512), randn(r, 3, 1, 512), randn(r, 3, 1, 512), [2], scale=1.0)
    with pytest.raises(ValueError, match="positions"):
        be.attention(q, k, v, [4, 5], scale=1.0)
    with pytest.raises(ValueError, match="sinks"):
        be.attention(q, k, v, [5], scale=1.0, sinks=np.zeros(3, F32))
    cache = be.new_kv(16, 2, 8)
    with pytest.raises(ValueError, match="outside"):
        be.kv_store(cache, randn(r, 2, 2, 8), [15, 16])
    with pytest.raises(ValueError, match="fit"):
        be.kv_store(cache, randn(r, 2, 3, 8), [0, 1])
    with pytest.raises(TypeError, match="cache"):
        be.kv_store(device_backend(name, "f32").new_kv(16, 2, 8), randn(r, 1, 2, 8), [0])
    with pytest.raises(ValueError, match="shape"):
        be.new_kv(0, 2, 8)


def test_launch_constants_match_the_kernel_source():
    """attention.py sizes launches and shared buffers with the kernel's #defines: one value each."""
    import re

    from kernels.gpu import attention, build

    defines = {m[0]: int(m[1]) for m in re.findall(r"^#define ATT_(\w+) (\d+)", build.source("attention"), re.M)}
    for name in ("WG", "CH", "HG", "DMAX", "QBUF", "KVBUF", "SBUF", "OBUF", "ROWS", "MWG"):
        assert defines[name] == getattr(attention, name), name
    assert defines["COLS"] * defines["WG"] >= defines["DMAX"]
    for group, dk, dv in [(3, 64, 64), (4, 256, 256), (80, 64, 64), (1, 17, 17), (8, 64, 32)]:
        hg, n_hsub, bt, bk = attention.tiled_geometry(group, dk, dv)
        rows = bt * hg
        assert hg * n_hsub >= group and rows <= attention.ROWS
        assert rows * dk <= attention.QBUF and rows * dv <= attention.OBUF and rows * bk <= attention.SBUF
        assert dk * (bk + 1) <= attention.KVBUF and bk * dv <= attention.KVBUF


def test_half_attention_follows_the_activations_mode(name):
    assert device_backend(name, "llama.cpp").half_attention
    assert not device_backend(name, "f32").half_attention
    assert device_backend(name, "f32").new_kv(4, 1, 8).dtype == np.float32
