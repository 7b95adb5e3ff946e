"""Activation rounding as llama.cpp's CPU does it: the NumPy reference, the Numba version, the backends."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.numba_cpu import NumbaBackend
from kernels.numba_cpu.activations import round_like_llama_cpp as fast, with_block_sums
from kernels.reference import NumpyBackend
from quant import GGMLType
from quant.activations import (VEC_DOT_TYPE, q8_1_block_sums, round_bf16, round_like_llama_cpp as ref, round_q8_0, round_q8_k,
                               split_offsets, vec_dot_type)

from qdata import random_qtensor

rng = np.random.default_rng(7)


def awkward_rows(n_in: int) -> np.ndarray:
    """Random rows plus the cases rounding gets wrong: zeros, tiny scales (f16 subnormal), an outlier,
    exact ties (x * 127 / amax = k + 0.5), a negative maximum."""
    x = rng.standard_normal((6, n_in)).astype(np.float32)
    x[1] = 0
    x[2] *= 1e-7
    x[3, 5] = 300.0
    x[4] = np.arange(n_in, dtype=np.float32) % 32 - 15.5 * (np.arange(n_in) % 2)
    x[5] = -np.abs(x[5])
    return x


@pytest.mark.parametrize("qtype", sorted(VEC_DOT_TYPE, key=int), ids=lambda t: t.name)
def test_numba_rounding_equals_reference(qtype):
    x = awkward_rows(512)
    np.testing.assert_array_equal(fast(x, qtype), ref(x, qtype))
    np.testing.assert_array_equal(fast(x[0], qtype), ref(x[0], qtype))  # a decode vector


def test_q8_0_values_are_f16_scale_times_int8():
    x = awkward_rows(256)
    y = round_q8_0(x).reshape(-1, 32)
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = (amax / 127).astype(np.float16).astype(np.float32)
    q = np.divide(y, d, out=np.zeros_like(y), where=d > 0)
    assert np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 127
    exact_d = amax / 127
    assert (np.abs(y - b) <= exact_d * 0.5 + 127 * np.abs(d - exact_d) + 1e-30).all()
    assert not y[1 * 8:2 * 8].any()  # the zero row


def test_q8_1_block_sums_round_the_unrounded_scale_times_the_code_sum():
    """x86 quantize_row_q8_1: s = f16(d32 * sum(q)) with d32 = amax / 127 in float32 (not the f16 d)."""
    x = np.zeros(32, np.float32)
    x[:3] = [1.0, 0.3, -0.7]
    d32 = np.float32(1.0) / np.float32(127)
    q = np.rint(x * (np.float32(127) / np.float32(1.0)))          # 127, 38, -89
    s = q8_1_block_sums(x)
    assert s.shape == (1,) and s[0] == np.float32(np.float16(d32 * np.float32(q.sum())))
    assert s[0] != round_q8_0(x).sum()                              # 76 * f16(d) is another number
    huge = np.full(32, 3000.0, np.float32)                         # 32 * 3000 overflows f16: inf, as in C
    assert np.isinf(q8_1_block_sums(huge)).all()


def test_numba_block_sums_equal_reference():
    x = awkward_rows(512)
    out = with_block_sums(x, rounded=True)
    np.testing.assert_array_equal(out[:, :512], round_q8_0(x))
    np.testing.assert_array_equal(out[:, 512:], q8_1_block_sums(x))
    exact = with_block_sums(x[0], rounded=False)                    # f32 mode: the exact sums
    np.testing.assert_array_equal(exact[:512], x[0])
    np.testing.assert_allclose(exact[512:], x[0].reshape(-1, 32).sum(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_1, GGMLType.Q5_1], ids=lambda t: t.name)
def test_offset_weights_take_the_block_sums(qtype):
    """Q4_1/Q5_1 products multiply the offsets m by Q8_1's f16 sums: a product computed from the
    rounded values alone differs measurably, and both backends agree with the two-part form."""
    w = random_qtensor(qtype, (16, 256), rng)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    codes, m = split_offsets(w)
    assert np.array_equal(codes + np.repeat(m, 32, axis=-1), w.dequantize())
    want = round_q8_0(x) @ codes.T + q8_1_block_sums(x) @ m.T
    plain = round_q8_0(x) @ w.dequantize().T
    rel = lambda y: np.linalg.norm(y - want) / np.linalg.norm(want)  # noqa: E731
    assert rel(plain) > 5e-6
    for be in (NumpyBackend(), NumbaBackend()):
        assert rel(be.matmul(x, w)) < rel(plain) / 10


def test_q8_k_keeps_the_signed_maximum_exact_and_clamps_at_127():
    x = awkward_rows(512)
    y = round_q8_k(x).reshape(-1, 256)
    b = x.reshape(-1, 256)
    i = np.abs(b).argmax(-1)
    rows = np.arange(len(b))
    np.testing.assert_allclose(y[rows, i], b[rows, i], rtol=1e-6)
    # the most negative value maps to q = +127 after the -127/max scale: nothing exceeds it
    assert (np.abs(y) <= np.abs(b[rows, i])[:, None] * (1 + 1e-6)).all()


def test_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, 3.0e38, -2.5, np.inf], np.float32)
    y = round_bf16(x)
    assert y[[0, 1, 2, 4, 5]].tolist() == [1.0, 1.0, 1.015625, -2.5, np.inf]  # ties go to the even mantissa
    assert abs(y[3] - x[3]) <= x[3] * 2 ** -8
    assert (y.view(np.uint32) & 0xFFFF == 0).all()


def test_vec_dot_types_follow_ggml():
    assert vec_dot_type(GGMLType.Q4_0) == vec_dot_type(GGMLType.MXFP4) == "q8_0"
    assert vec_dot_type(GGMLType.Q4_1) == "q8_1"
    assert vec_dot_type(GGMLType.Q4_K) == vec_dot_type(GGMLType.IQ4_XS) == "q8_k"
    assert vec_dot_type(GGMLType.F32) == "none"


@pytest.mark.parametrize("backend", [NumpyBackend, NumbaBackend])
def test_backends_round_unless_asked_for_f32(backend):
    w = random_qtensor(GGMLType.Q8_0, (8, 64), rng)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    exact = x @ w.dequantize().T
    rounded = round_q8_0(x) @ w.dequantize().T
    np.testing.assert_allclose(backend(activations="f32").matmul(x, w), exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend().matmul(x, w), rounded, rtol=1e-5, atol=1e-5)
    assert not np.allclose(rounded, exact, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="activations"):
        backend(activations="int4")


def test_f16_rounding_is_numpys_bit_for_bit():
    """to_f16 (the F16C conversions where the host has them, by hand elsewhere) rounds as NumPy's
    float32 -> float16 -> float32: ties to even, subnormals, overflow to inf, signed zeros."""
    from kernels.numba_cpu.activations import f16_rounded

    r = np.random.default_rng(5)
    bits = r.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    edges = np.array([65504.0, 65519.0, 65520.0, -65520.0, 6.1035156e-05, 2.9802322e-08, 2.9802326e-08,
                      5.9604645e-08, 1e-9, 0.0, -0.0, np.inf, -np.inf], np.float32)
    x = np.concatenate([bits.view(np.float32), edges])
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(f16_rounded(x).view(np.uint32), want.view(np.uint32))
