"""The device backends' elementwise, row, RoPE and MoE-routing kernels against the NumPy reference
(kernels/ops_numpy.py), on every device found (PoCL in CI), with the bounds of tests/test_kernels_ops.py.
Also the hand-written f16 conversions of src/prelude.h, exhaustively, and DArray's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_devices import backend_names, device_backend
from kernels.base import RopeParams
from kernels.ops_numpy import NumpyOps

F32 = np.float32
REF = NumpyOps()


@pytest.fixture(params=backend_names())
def dev(request):
    return device_backend(request.param)


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(r, *shape, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(F32)


def assert_rel(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _ties() -> np.ndarray:
    pos = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mid = (pos[:-1] + pos[1:]) / 2
    return np.concatenate([mid, -mid]).astype(F32)


def test_f16_conversions_are_exact_for_every_value(dev):
    """Every one of the 65536 halves to float, and floats (normal, subnormal-range, huge, ties, inf, NaN) to
    half with round-to-nearest-even, bit for bit as NumPy."""
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = dev.empty(halves.shape)
    src = dev.empty(halves.shape, np.uint16)
    dev.rt.write(src.buf, halves)
    dev.launch("elementwise", "f16_to_f32_k", halves.size, 64, src, out, halves.size)
    got = dev.to_numpy(out)
    want = halves.view(np.float16).astype(F32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))

    r = rng(1)
    xs = np.concatenate([
        randn(r, 20000, scale=100.0), randn(r, 20000, scale=1e-5), randn(r, 5000, scale=1e-7),
        _ties(),  # exact ties between neighbouring finite halves
        np.array([65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 0.0, -0.0, 2**-25, 2**-24, 2**-14], F32)])
    xs = xs[np.isfinite(xs) | np.isinf(xs)]
    xin = dev.asarray(xs)
    h = dev.empty(xs.shape, np.uint16)
    dev.launch("elementwise", "f32_to_f16_k", xs.size, 64, xin, h, xs.size)
    got = dev.to_numpy(h)
    with np.errstate(over="ignore"):
        want = xs.astype(np.float16).view(np.uint16)
    bad = np.nonzero(got != want)[0]
    assert not len(bad), [(float(xs[i]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("shape", [(576,), (3, 576), (2, 5, 64), (1, 37)])
def test_rms_norm(dev, shape):
    r = rng(2)
    x = randn(r, *shape, scale=3.0)
    w = randn(r, shape[-1])
    assert_rel(dev.to_numpy(dev.rms_norm(dev.asarray(x), dev.asarray(w), 1e-6)), REF.rms_norm(x, w, 1e-6))
    assert_rel(dev.to_numpy(dev.rms_norm(dev.asarray(x), None, 1e-5)), REF.rms_norm(x, None, 1e-5))


@pytest.mark.parametrize("shape", [(1, 49152), (3, 7), (4, 300)])
def test_softmax(dev, shape):
    x = randn(rng(3), *shape, scale=5.0)
    assert_rel(dev.to_numpy(dev.softmax(dev.asarray(x))), REF.softmax(x), 1e-5)


def test_activations(dev):
    r = rng(4)
    x = np.concatenate([randn(r, 5000, scale=4.0), np.array([-12, -10, -9.99, 0, 9.99, 10, 12, 80, -80], F32)])
    u = randn(r, x.size)
    d, du = dev.asarray(x), dev.asarray(u)
    assert_rel(dev.to_numpy(dev.silu(d)), REF.silu(x))
    # gelu rounds to f16 twice: a float32 tanh 1 ulp away can land on the neighbouring half
    assert_rel(dev.to_numpy(dev.gelu(d)), REF.gelu(x), 1e-3)
    assert_rel(dev.to_numpy(dev.swiglu(d, du)), REF.swiglu(x, u))
    assert_rel(dev.to_numpy(dev.geglu(d, du)), REF.geglu(x, u), 1e-3)
    assert_rel(dev.to_numpy(dev.swiglu_oai(d, du, 1.702, 7.0)), REF.swiglu_oai(x, u, 1.702, 7.0))
    assert_rel(dev.to_numpy(dev.softcap(d, 30.0)), REF.softcap(x, 30.0))


def test_darray_arithmetic_and_rows(dev):
    r = rng(5)
    a, b, bias = randn(r, 4, 96), randn(r, 4, 96), randn(r, 96)
    da, db = dev.asarray(a), dev.asarray(b)
    assert_rel(dev.to_numpy(da + db), a + b, 0)
    assert_rel(dev.to_numpy(da + dev.asarray(bias)), a + bias, 0)
    assert_rel(dev.to_numpy(da * db), a * b, 0)
    assert_rel(dev.to_numpy(da * np.float32(0.25)), a * F32(0.25), 0)
    assert_rel(dev.to_numpy(0.5 * da), a * F32(0.5), 0)
    assert_rel(dev.to_numpy((da / 4.0)), a * F32(0.25), 0)
    assert_rel(dev.to_numpy(da[-1:]), a[-1:], 0)
    assert_rel(dev.to_numpy(da[1:3]), a[1:3], 0)
    assert dev.to_numpy(da.reshape(4, 8, 12)).shape == (4, 8, 12)
    with pytest.raises(TypeError):
        np.asarray(da)
    with pytest.raises(ValueError):
        da + dev.asarray(randn(r, 5))


ROPES = [
    RopeParams(64),
    RopeParams(64, mode="neox", freq_base=1e6),
    RopeParams(32, mode="neox"),                                       # partial rotation: dims 32.. pass
    RopeParams(64, mode="neox", freq_base=150000, freq_scale=1 / 32, ext_factor=1.0, n_ctx_orig=4096,
               beta_fast=32, beta_slow=1),                             # gpt-oss YaRN
    RopeParams(64, freq_base=500000, freq_factors=np.linspace(1, 8, 32).astype(F32)),  # llama 3
]


@pytest.mark.parametrize("p", ROPES, ids=["normal", "neox", "partial", "yarn", "freq_factors"])
def test_rope(dev, p):
    r = rng(6)
    x = randn(r, 7, 9, 64)
    for pos in (np.arange(7, dtype=np.int32), np.arange(4090, 4097, dtype=np.int32) * 3):
        assert_rel(dev.to_numpy(dev.rope(dev.asarray(x), pos, p)), REF.rope(x, pos, p), 2e-6)
    # positions from device memory (how a replayed step gets them)
    pos = np.array([5, 100, 2000, 3, 4, 5, 6], np.int32)
    assert_rel(dev.to_numpy(dev.rope(dev.asarray(x), dev.ints(pos), p)), REF.rope(x, pos, p), 2e-6)


@pytest.mark.parametrize("gating", ["softmax", "softmax_weight"])
@pytest.mark.parametrize("n_expert,k", [(8, 2), (32, 4), (128, 8)])
def test_moe_route_and_combine(dev, gating, n_expert, k):
    r = rng(7)
    logits = randn(r, 5, n_expert, scale=2.0)
    logits[0, 3] = logits[0, 5] = 9.0  # a tie: the lower id first, as a stable argsort
    ids, w = dev.moe_route(dev.asarray(logits), k, gating)
    ref_ids, ref_w = REF.moe_route(logits, k, gating)
    assert np.array_equal(dev.to_numpy(ids), ref_ids)
    assert_rel(dev.to_numpy(w), ref_w, 2e-6)
    d = randn(r, 5, k, 40)
    assert_rel(dev.to_numpy(dev.moe_combine(dev.asarray(d), w)), REF.moe_combine(d, ref_w), 2e-6)
