"""The CPU KV cache in f16 (kernels/numba_cpu/half.py): the conversions against NumPy's, for every f16
value and the float32 values at each rounding boundary, both the F16C instructions (where this host has
them) and the integer fallback; a llama.cpp-mode cache is f16 and attention over it is bit for bit
attention over the same values in float32."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from kernels.numba_cpu import NumbaBackend, half  # noqa: E402
from kernels.numba_cpu.int_intrinsics import HOST_F16C  # noqa: E402

ALL_BITS = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def _each(fn):
    """A jitted loop writing fn(x[i]) into out[i]."""
    @numba.njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return run


_bits_f16c, _bits_hand = _each(half._f16c_bits), _each(half.f16_bits_by_hand)
_value_f16c, _value_hand = _each(half._f16c_value), _each(half.f16_bits_to_f32)
_kv_value_of = _each(half.kv_value)


CONVERSIONS = [pytest.param(_bits_hand, _value_hand, id="integer-fallback"),
               pytest.param(_bits_f16c, _value_f16c, id="f16c",
                            marks=pytest.mark.skipif(not HOST_F16C, reason="this host has no F16C"))]


def boundary_floats() -> np.ndarray:
    """float32 values where rounding to f16 decides something: every finite f16 value, the midpoints
    between neighbours (ties: to even), one float32 step either side of each midpoint, past the largest
    f16 (65504; 65520 is the tie to infinity), the subnormal range, zeros, infinities."""
    v = ALL_BITS.view(np.float16).astype(np.float32)
    finite = np.unique(v[np.isfinite(v)])
    mid = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)  # exact in float32
    extra = np.array([65504, 65519.996, 65520, 65536, 1e10, 3.4e38, 2.0**-24, 2.0**-25, 2.0**-26, 1.5 * 2.0**-24,
                      2.0**-14, 2.0**-14 - 2.0**-25, 0.0, -0.0, np.inf, -np.inf], np.float32)
    x = np.concatenate([finite, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
                        extra, -extra])
    return x.astype(np.float32)


@pytest.mark.parametrize("to_bits,to_value", CONVERSIONS)
def test_f32_to_f16_bits_rounds_as_numpy(to_bits, to_value):
    x = boundary_floats()
    got = np.empty(x.shape, np.uint16)
    to_bits(x, got)
    with np.errstate(over="ignore"):  # (NumPy warns of the values that round to infinity)
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("to_bits,to_value", CONVERSIONS)
def test_nans_stay_quiet_nans_of_their_sign(to_bits, to_value):
    x = np.array([0x7FC00000, 0x7F800001, 0xFFC12345, 0x7FFFFFFF], np.uint32).view(np.float32)
    got = np.empty(x.shape, np.uint16)
    to_bits(x, got)
    assert np.all(np.isnan(got.view(np.float16)))
    assert np.all(got & 0x0200)                                      # quiet
    np.testing.assert_array_equal(got >> 15, x.view(np.uint32) >> 31)  # sign kept


@pytest.mark.parametrize("to_bits,to_value", CONVERSIONS)
def test_f16_bits_to_f32_is_exact_for_every_value(to_bits, to_value):
    got = np.empty(ALL_BITS.shape, np.float32)
    to_value(ALL_BITS, got)
    want = ALL_BITS.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # -0.0 included
    assert np.all(np.isnan(got[nan]))


def test_kv_value_reads_f16_bits_and_float32_alike():
    x = np.array([1.5, -2.25, 65504.0, 2.0**-24], np.float32)
    for a in (x, x.astype(np.float16).view(np.uint16)):
        out = np.empty(4, np.float32)
        _kv_value_of(a, out)
        np.testing.assert_array_equal(out, x)
    with pytest.raises(numba.core.errors.TypingError, match="f16 bits"):
        _kv_value_of(x.astype(np.float64), np.empty(4, np.float32))


def test_the_llama_cpp_mode_cache_is_f16_and_the_exact_mode_float32():
    assert NumbaBackend().new_kv(8, 2, 64).dtype == np.float16
    assert NumbaBackend().new_kv(8, 2, 64).nbytes == 8 * 2 * 64 * 2
    assert NumbaBackend(activations="f32").new_kv(8, 2, 64).dtype == np.float32


@pytest.mark.parametrize("n_kv", [3, 40, 700])
def test_attention_over_an_f16_cache_is_attention_over_its_values(n_kv):
    """The same keys and values as an f16 cache and as float32 arrays: the same output bits, a decode
    token and a prompt chunk, with a window and sinks (the prefetch and the 4-row score loop included)."""
    be, r = NumbaBackend(), np.random.default_rng(5)
    k = r.standard_normal((n_kv, 2, 64)).astype(np.float16)
    v = r.standard_normal((n_kv, 2, 64)).astype(np.float16)
    for n_tok in (1, 5):
        q = r.standard_normal((n_tok, 6, 64)).astype(np.float32)
        pos = np.arange(n_kv - n_tok, n_kv)
        for kw in ({}, {"window": 16, "sinks": r.standard_normal(6).astype(np.float32)}):
            got = be.attention(q, k, v, pos, scale=0.125, **kw)
            want = be.attention(q, k.astype(np.float32), v.astype(np.float32), pos, scale=0.125, **kw)
            np.testing.assert_array_equal(got, want)


def test_a_models_cache_is_f16_and_decodes_as_before(smollm2_path):
    """A model's caches (one sequence, and a batch scheduler's pool) are f16: half the bytes."""
    from engine.engine import Engine

    eng = Engine.load(smollm2_path, n_ctx=64, n_threads=2)
    c = eng.model.new_cache(64)
    assert all(a.dtype == np.float16 for a in c.k + c.v)
    assert sum(a.nbytes for a in c.k + c.v) == 2 * 30 * 64 * 3 * 64 * 2  # K and V, 30 layers, 3 kv heads of 64
    pool = eng.model.new_caches(32, 2)
    assert pool[0].pool is not None and pool[0].pool.k[0].dtype == np.float16


@pytest.mark.parametrize("n_head,n_head_kv", [(4, 1), (3, 1), (9, 3)])
def test_splitting_the_query_heads_of_a_kv_head_changes_no_bits(n_head, n_head_kv):
    """With fewer (token, kv head) items than threads attention splits the query heads sharing a kv head
    over the threads (ops._head_split); every head's output is the same bits as in one thread's call,
    which computes the group together."""
    r = np.random.default_rng(9)
    k = r.standard_normal((700, n_head_kv, 64)).astype(np.float16)
    v = r.standard_normal((700, n_head_kv, 64)).astype(np.float16)
    q = r.standard_normal((1, n_head, 64)).astype(np.float32)
    many, one = NumbaBackend(n_threads=4), NumbaBackend(n_threads=1)
    group = n_head // n_head_kv
    nt = many._threads()
    parts = many._head_split(n_head_kv, group, True)
    assert parts == (1 if n_head_kv >= nt else min(group, -(-nt // n_head_kv)))
    assert one._head_split(n_head_kv, group, False) == 1
    for kw in ({}, {"window": 100, "sinks": r.standard_normal(n_head).astype(np.float32)}):
        want = one.attention(q, k, v, np.array([699]), scale=0.125, **kw)
        got = many.attention(q, k, v, np.array([699]), scale=0.125, **kw)
        np.testing.assert_array_equal(got, want)
