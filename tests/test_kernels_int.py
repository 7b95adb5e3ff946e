"""The integer dot kernels (kernels/numba_cpu/rows_int.py) and the packed activations they take.

* The packers keep llama.cpp's rounding as integers: codes times scales are exactly the values
  `quant.activations` rounds x to, and the block sums are those of the codes.
* Each integer kernel equals llama.cpp's formula computed exactly (float64 from the integer codes):
  per block d_w * d_x * sum(q_w * q_x) (K-quants: d_w * d_x * sum over sub-blocks of scale * integer
  sum, minus the mins times x's bsums), to 2e-6 of the output's typical size -- tighter than the
  float kernels' 1e-5 bar in test_kernels_products.
* The portable IR (hosts without AVX-512 VNNI / AVX-VNNI or SSSE3) gives the same bits as the VNNI
  instructions: integer sums do not depend on how they are formed.
* `activations="f32"` never takes the integer kernels.
* The integer GEMM of prompts (gemm_int.py) meets the same 2e-6 bar, gives a token the same bits in
  any company, and its portable IR the same bits as VNNI.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from kernels.numba_cpu import NumbaBackend, gemm_int, int_intrinsics, products
from kernels.numba_cpu.int_intrinsics import stack_i64
from kernels.numba_cpu.rows_common import stack_f32
from kernels.numba_cpu.activations import pack_q8_32, pack_q8_k, with_block_sums
from kernels.numba_cpu.rows_common import slp_compile_scope
from quant import GGMLType, quant_type
from quant.activations import round_like_llama_cpp
from qdata import random_qtensor
from test_kernels_products import abs_product, rel_err, rng_for

INT_TYPES = list(products.INT_KERNELS)
K_PACKED = {t for t, (_, pack) in products.INT_KERNELS.items() if pack is pack_q8_k}


def unpack(xq: np.ndarray, n: int, k: bool):
    """(codes int64 (n,), scales (n/block,), sums) of one packed row."""
    codes = xq[:n].view(np.int8).astype(np.int64)
    nb = n // (256 if k else 32)
    scales = xq[n:n + 4 * nb].view(np.float32).astype(np.float64)
    sums = xq[n + 4 * nb:].view(np.float32).astype(np.float64)
    return codes, scales, sums


def test_pack_q8_32_is_the_q8_1_rounding_as_integers():
    x = rng_for("pack32").standard_normal((3, 256)).astype(np.float32) * 3
    x[1, :32] = 0.0                                           # an all-zero block
    xq = pack_q8_32(x)
    ref = with_block_sums(x, rounded=True)
    for r in range(3):
        codes, d, s = unpack(xq[r], 256, k=False)
        assert np.abs(codes).max() <= 127
        np.testing.assert_array_equal((codes.reshape(-1, 32) * d[:, None]).reshape(-1).astype(np.float32), ref[r, :256])
        np.testing.assert_array_equal(s.astype(np.float32), ref[r, 256:])


def test_pack_q8_k_is_the_q8_k_rounding_as_integers():
    x = rng_for("packk").standard_normal((2, 512)).astype(np.float32)
    x[1, 256:] = 0.0
    xq = pack_q8_k(x)
    ref = round_like_llama_cpp(x, GGMLType.Q4_K)
    for r in range(2):
        codes, d, bsums = unpack(xq[r], 512, k=True)
        np.testing.assert_array_equal((codes.reshape(2, 256) * d[:, None]).reshape(-1).astype(np.float32), ref[r])
        np.testing.assert_array_equal(bsums, codes.reshape(-1, 16).sum(1))


def test_packers_refuse_partial_blocks():
    with pytest.raises(ValueError, match="blocks of 32"):
        pack_q8_32(np.zeros((1, 48), np.float32))
    with pytest.raises(ValueError, match="blocks of 256"):
        pack_q8_k(np.zeros((1, 288), np.float32))


def exact_product(w, xq_row, k: bool) -> np.ndarray:
    """llama.cpp's vec_dot formula in float64 from the integer codes: with the weight dequantized
    against the *unscaled* codes, sum(w * q_x) per block is exact up to float64 rounding, and times
    d_x it is d_w * d_x * sum(q_w * q_x) (+ Q4_1/Q5_1's m times x's f16 block sums)."""
    n = w.shape[1]
    codes, d, sums = unpack(xq_row, n, k)
    wd = w.dequantize().astype(np.float64)
    blk = 256 if k else 32
    if w.qtype in (GGMLType.Q4_1, GGMLType.Q5_1):
        # y = d * q + m: llama.cpp multiplies m by x's stored f16 block sum, not by d_x * sum(codes)
        rows = w.data.reshape(w.shape[0], -1)
        step = quant_type(w.qtype).block_bytes
        m = np.stack([rows[:, o + 2:o + 4].copy().view(np.float16)[:, 0] for o in range(0, rows.shape[1], step)],
                     axis=1).astype(np.float64)
        wd_no_m = wd - np.repeat(m, 32, axis=1)
        per_block = (wd_no_m * codes).reshape(w.shape[0], -1, 32).sum(-1) * d
        return per_block.sum(-1) + (m * sums).sum(-1)
    per_block = (wd * codes).reshape(w.shape[0], -1, blk).sum(-1) * d
    return per_block.sum(-1)


@pytest.mark.parametrize("qt", INT_TYPES, ids=lambda t: t.name)
def test_integer_kernel_equals_llama_cpp_formula(qt):
    rng = rng_for(qt, "exact")
    k = qt in K_PACKED
    n_in = 512 if k else 256
    w = random_qtensor(qt, (37, n_in), rng)
    x = rng.standard_normal(n_in).astype(np.float32)
    xq = (pack_q8_k if k else pack_q8_32)(x[None])[0]
    y = NumbaBackend(n_threads=2).matmul(x, w)
    assert rel_err(y, exact_product(w, xq, k), abs_product(x, w)) < 2e-6


def _rows_driver(dot):
    @numba.njit(fastmath={"contract", "nsz"}, error_model="numpy", boundscheck=False)
    def rows(w2, xq, out):
        xo = numba.carray(stack_i64(1), 1)
        res = numba.carray(stack_f32(1), 1)
        xo[0] = 0
        for r in range(w2.shape[0]):
            dot(w2[r], xq, xo, res)
            out[r] = res[0]

    return rows


def _int_dot(qt):
    return products.INT_KERNELS[qt][0][1]  # the one-token kernel


@pytest.mark.parametrize("qt", INT_TYPES, ids=lambda t: t.name)
def test_portable_ir_gives_the_same_bits_as_vnni(qt, monkeypatch):
    rng = rng_for(qt, "portable")
    k = qt in K_PACKED
    n_in = 512 if k else 256
    w = random_qtensor(qt, (16, n_in), rng)
    w2 = w.data.reshape(16, -1)
    xq = (pack_q8_k if k else pack_q8_32)(rng.standard_normal((1, n_in)).astype(np.float32))[0]
    host = np.empty(16, np.float32)
    portable = np.empty(16, np.float32)
    with slp_compile_scope():
        _rows_driver(_int_dot(qt))(w2, xq, host)
        monkeypatch.setattr(int_intrinsics, "HOST_VNNI", False)
        monkeypatch.setattr(int_intrinsics, "HOST_SSSE3", False)
        # a fresh copy of the kernel, so that its intrinsics are generated again with the flags off
        fresh = numba.njit(inline="always", fastmath={"contract", "nsz"}, error_model="numpy", boundscheck=False)(
            _int_dot(qt).py_func)
        _rows_driver(fresh)(w2, xq, portable)
    np.testing.assert_array_equal(host, portable)


def test_f32_activations_keep_the_float_kernels():
    """activations="f32" multiplies the exact x: the result differs from the rounded one, and equals
    the float kernels' product of the unrounded x."""
    rng = rng_for("f32-mode")
    w = random_qtensor(GGMLType.Q4_0, (8, 256), rng)
    x = rng.standard_normal(256).astype(np.float32)
    exact = w.dequantize().astype(np.float64) @ x.astype(np.float64)
    y_f32 = NumbaBackend(n_threads=1, activations="f32").matmul(x, w)
    y_q8 = NumbaBackend(n_threads=1).matmul(x, w)
    assert rel_err(y_f32, exact) < 1e-6
    assert rel_err(y_q8, exact) > 1e-4   # rounded to 8 bits: visibly different from the exact product


GEMM_TYPES = list(gemm_int.GEMMS)


@pytest.mark.parametrize("qt", GEMM_TYPES, ids=lambda t: t.name)
def test_integer_gemm_equals_llama_cpp_formula(qt):
    """A prompt's product (the tiled path) through the integer GEMM: every token's row equals
    llama.cpp's formula computed exactly, to the integer kernels' 2e-6 -- 8-row panels with a partial
    last panel (37 rows), token groups with a partial last group (11 tokens)."""
    rng = rng_for(qt, "gemm")
    k = qt in K_PACKED
    n_in = 512 if k else 256
    w = random_qtensor(qt, (37, n_in), rng)
    x = rng.standard_normal((11, n_in)).astype(np.float32)
    xq = (pack_q8_k if k else pack_q8_32)(x)
    y = NumbaBackend(n_threads=2).matmul(x, w, path="tiles")
    for t in range(11):
        assert rel_err(y[t], exact_product(w, xq[t], k), abs_product(x[t], w)) < 2e-6


@pytest.mark.parametrize("qt", GEMM_TYPES, ids=lambda t: t.name)
def test_integer_gemm_gives_a_token_the_same_bits_in_any_company(qt):
    """The GEMM's arithmetic per (row, token) does not depend on the other tokens of the call: the
    prompt rows of a batched step are what they are alone (batch invariance of the tiled path)."""
    rng = rng_for(qt, "gemm-company")
    n_in = 512
    w = random_qtensor(qt, (24, n_in), rng)
    x = rng.standard_normal((9, n_in)).astype(np.float32)
    be = NumbaBackend(n_threads=2)
    together = be.matmul(x, w, path="tiles")
    for t in (0, 4, 8):
        np.testing.assert_array_equal(be.matmul(x[t:t + 1], w, path="tiles")[0], together[t])
    np.testing.assert_array_equal(be.matmul(x[3:8], w, path="tiles"), together[3:8])


@pytest.mark.parametrize("qt", GEMM_TYPES, ids=lambda t: t.name)
def test_integer_gemm_portable_ir_gives_the_same_bits(qt, monkeypatch):
    """Without VNNI the panels' integer sums are written in generic IR: the same bits."""
    rng = rng_for(qt, "gemm-portable")
    k = qt in K_PACKED
    n_in = 512
    w = random_qtensor(qt, (16, n_in), rng)
    x = rng.standard_normal((5, n_in)).astype(np.float32)
    xu = gemm_int.unsigned_codes((pack_q8_k if k else pack_q8_32)(x), n_in)
    w3 = w.data.reshape(1, 16, -1)
    idx = np.arange(5)
    host, portable = np.empty((5, 16), np.float32), np.empty((5, 16), np.float32)
    with slp_compile_scope():
        gemm_int.make_gemm(*gemm_int.CHUNKS[qt])(w3, 0, 0, 16, n_in, xu, idx, 0, 5, idx, host)
        monkeypatch.setattr(int_intrinsics, "HOST_VNNI", False)
        gemm_int.make_gemm(*gemm_int.CHUNKS[qt])(w3, 0, 0, 16, n_in, xu, idx, 0, 5, idx, portable)
    np.testing.assert_array_equal(host, portable)
