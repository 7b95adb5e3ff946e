"""The device products (kernels/gpu/products.py) against the NumPy reference, on every device backend
found (OpenCL: PoCL in CI; CUDA/ROCm where a GPU is).

All 16 types; decode shapes (1-D x, 1, 3 and 8 tokens: the matrix-vector kernels) and batch shapes
(17 and 70 tokens: the tiled kernel); odd row counts (1, 7, 33, 130: not multiples of the rows per
work-group or of the 64-row tiles) with rows of one and several blocks; three paths: "llama.cpp"
activations through the integer (DP4A) kernels, "llama.cpp" activations through the float kernels
(`use_dp4a = False`), and exact "f32" activations. Bias epilogues, MoE products (x shared or per
slot, expert ids on the device, bias by expert, unchosen experts never read), embedding rows
(bit-exact with quant's dequantizers), the activation rounding (bit-exact with quant.activations)
and the errors.

Error measure and bound: the same as tests/test_kernels_products.py (relative error < 1e-5, the
denominator never below the typical size of a product, || |x| @ |W|^T || / sqrt(n_in)).

Each weight type is one kernel build per backend (a few seconds cold on PoCL, cached by PoCL in
~/.cache/pocl afterwards); inner dimensions are kept small where a large one adds nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_devices import backend_names, device_backend
from kernels.base import KernelError
from kernels.reference import NumpyBackend
from qdata import random_qtensor
from quant import GGMLType, QTensor, dequantize
from quant.activations import round_like_llama_cpp
from test_kernels_products import ALL_TYPES, TOL, abs_product, expert_ids, rel_err, rng_for, unit

T = GGMLType
BACKENDS = backend_names()
REF = {mode: NumpyBackend(activations=mode) for mode in ("llama.cpp", "f32")}
HOT_TYPES = [T.Q4_0, T.Q4_K, T.Q6_K, T.MXFP4, T.F16]

SHAPES = [(1, 3), (7, 1), (33, 4)]              # (n_out, n_in in blocks)
N_TOKS = [None, 1, 3, 8, 17, 70]                 # None: 1-D x; <= 8 matrix-vector, else tiled
# path: (activations mode, integer path allowed)
PATHS = {"int": ("llama.cpp", True), "float": ("llama.cpp", False), "f32": ("f32", False)}
# Q4_1/Q5_1 weights take their block offsets through x's block sums. The reference models x86 llama.cpp's
# f16 Q8_1 sums (quant/activations.py); the device kernels use the exact sums of the rounded codes (as
# does no llama.cpp build: its CUDA path stores f16 of the unrounded float sum), a difference of up to
# half an f16 step (2**-12) of each block sum times its offset: these two types get that room in llama.cpp mode.
TOL_OFFSETS = 2.0 ** -12


def tol(w, mode="llama.cpp") -> float:
    return TOL_OFFSETS if mode == "llama.cpp" and w.qtype in (T.Q4_1, T.Q5_1) else TOL


@pytest.fixture(params=BACKENDS)
def be_name(request):
    return request.param


def backend(name, monkeypatch, path="int"):
    """The session's backend of `name` set to one path (one instance, so each type builds once)."""
    be = device_backend(name)
    mode, dp4a = PATHS[path]
    monkeypatch.setattr(be, "activations", mode)
    monkeypatch.setattr(be, "use_dp4a", dp4a)
    return be


def run_matmul(be, w: QTensor, n_tok, rng, mode, bias=False, device_x=False):
    n_out, n_in = w.shape
    x = rng.standard_normal(n_in if n_tok is None else (n_tok, n_in)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32) if bias else None
    dw = be.upload(w)
    y = be.to_numpy(be.matmul(be.asarray(x) if device_x else x, dw, bias=b))
    y_ref = REF[mode].matmul(x, w, b)
    assert y.shape == y_ref.shape and y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert rel_err(y, y_ref, abs_product(x, w)) < tol(w, mode)


def token_paths(n_toks):
    """(n_tok, path) pairs, without the float path on batches: batches always take the float (tiled)
    kernels, so there it would repeat the 'int' case."""
    return [pytest.param(n, p, id=f"{'x1d' if n is None else f'tok{n}'}-{p}") for n in n_toks for p in PATHS
            if not (p == "float" and n is not None and n > 8)]


@pytest.mark.parametrize("n_tok,path", token_paths(N_TOKS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}blk")
@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_matmul(be_name, monkeypatch, qt, shape, n_tok, path):
    be = backend(be_name, monkeypatch, path)
    rng = rng_for("gpu", qt, shape, n_tok)
    w = random_qtensor(qt, (shape[0], shape[1] * unit(qt)), rng)
    run_matmul(be, w, n_tok, rng, PATHS[path][0])


@pytest.mark.parametrize("n_tok,path", token_paths([None, 5, 70]))
@pytest.mark.parametrize("qt", HOT_TYPES, ids=lambda t: t.name)
def test_matmul_several_tiles(be_name, monkeypatch, qt, n_tok, path):
    """130 rows (three 64-row tiles, the last partial), 8 blocks a row (several inner steps)."""
    be = backend(be_name, monkeypatch, path)
    rng = rng_for("gpu-tiles", qt, n_tok)
    w = random_qtensor(qt, (130, 8 * unit(qt)), rng)
    run_matmul(be, w, n_tok, rng, PATHS[path][0], device_x=True)


@pytest.mark.parametrize("n_tok", [None, 4, 17], ids=lambda n: "x1d" if n is None else f"tok{n}")
@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_bias(be_name, monkeypatch, qt, n_tok):
    be = backend(be_name, monkeypatch, "int")
    rng = rng_for("gpu-bias", qt, n_tok)
    w = random_qtensor(qt, (33, 2 * unit(qt)), rng)
    run_matmul(be, w, n_tok, rng, "llama.cpp", bias=True)


def test_matmul_errors(be_name, monkeypatch):
    be = backend(be_name, monkeypatch)
    w = be.upload(random_qtensor(T.Q8_0, (4, 64), rng_for("gpu-mismatch")))
    with pytest.raises(ValueError, match="64 inputs"):
        be.matmul(np.zeros(32, np.float32), w)
    with pytest.raises(ValueError, match="bias"):
        be.matmul(np.zeros(64, np.float32), w, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="n_expert"):
        be.matmul_experts(np.zeros((1, 64), np.float32), w, np.zeros((1, 1), np.int32))


# --- experts: 4 experts, top-2, skewed choices (an expert with many tokens, one with few)


def run_experts(be, qt, layout, n_tok, mode, rng, bias=False, host_ids=False):
    n_expert, n_out, n_in = 4, 33, 2 * unit(qt)
    w = random_qtensor(qt, (n_expert, n_out, n_in), rng)
    ids = expert_ids(rng, n_tok)
    shape = (n_tok, n_in) if layout == "shared" else (n_tok, ids.shape[1], n_in)
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal((n_expert, n_out)).astype(np.float32) if bias else None
    y = be.matmul_experts(x, be.upload(w), ids if host_ids else be.ints(ids), bias=b)
    y = be.to_numpy(y)
    y_ref = REF[mode].matmul_experts(x, w, ids, b)
    assert y.shape == y_ref.shape == (n_tok, 2, n_out) and y.dtype == np.float32
    assert rel_err(y, y_ref, abs_product(x, w, ids)) < tol(w, mode)


@pytest.mark.parametrize("path", ["int", "f32"])
@pytest.mark.parametrize("n_tok", [1, 3, 17, 70], ids=lambda n: f"tok{n}")
@pytest.mark.parametrize("layout", ["shared", "per_slot"])
@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_experts(be_name, monkeypatch, qt, layout, n_tok, path):
    be = backend(be_name, monkeypatch, path)
    run_experts(be, qt, layout, n_tok, PATHS[path][0], rng_for("gpu-experts", qt, layout, n_tok))


@pytest.mark.parametrize("n_tok", [2, 40], ids=lambda n: f"tok{n}")
@pytest.mark.parametrize("path", ["int", "float"])
@pytest.mark.parametrize("qt", HOT_TYPES, ids=lambda t: t.name)
def test_matmul_experts_bias_and_host_ids(be_name, monkeypatch, qt, path, n_tok):
    be = backend(be_name, monkeypatch, path)
    rng = rng_for("gpu-experts-bias", qt, path, n_tok)
    run_experts(be, qt, "per_slot", n_tok, "llama.cpp", rng, bias=True)
    run_experts(be, qt, "shared", n_tok, "llama.cpp", rng, host_ids=True)


def test_matmul_experts_reads_only_chosen_experts(be_name, monkeypatch):
    """Experts never chosen may hold anything (here NaN scales): they must not be read; an id out
    of range on the device gives a NaN row (host ids are checked first)."""
    be = backend(be_name, monkeypatch)
    rng = rng_for("gpu-chosen")
    w = random_qtensor(T.Q8_0, (4, 16, 64), rng)
    data = w.data.copy()
    data[[0, 2]] = 0xFF
    w = QTensor.from_buffer(T.Q8_0, w.shape, data)
    dw = be.upload(w)
    for n_tok in (1, 5, 40):
        ids = np.stack([rng.permutation([1, 3]) for _ in range(n_tok)]).astype(np.int32)
        x = rng.standard_normal((n_tok, 64)).astype(np.float32)
        y = be.to_numpy(be.matmul_experts(x, dw, be.ints(ids)))
        assert np.all(np.isfinite(y))
        assert rel_err(y, REF["llama.cpp"].matmul_experts(x, w, ids)) < tol(w)
        bad = ids.copy()
        bad[0, 1] = 7
        y = be.to_numpy(be.matmul_experts(x, dw, be.ints(bad)))
        assert np.all(np.isnan(y[0, 1])) and np.all(np.isfinite(np.delete(y.reshape(-1, 16), 1, axis=0)))
        with pytest.raises(IndexError, match="expert ids"):
            be.matmul_experts(x, dw, bad)


# --- embedding rows


@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows(be_name, monkeypatch, qt):
    be = backend(be_name, monkeypatch)
    rng = rng_for("gpu-rows", qt)
    w = random_qtensor(qt, (50, 3 * unit(qt)), rng)
    dw = be.upload(w)
    for ids in (np.array([3, 0, 49, 3, 7]), np.array([[1, 2], [-1, 0]]), np.array([5], np.int32)):
        y, y_ref = be.to_numpy(be.get_rows(dw, ids)), REF["f32"].get_rows(w, ids)
        assert y.shape == y_ref.shape and y.dtype == np.float32
        assert np.array_equal(y.view(np.uint32), y_ref.view(np.uint32))     # bit-exact, signed zeros too
    y = be.to_numpy(be.get_rows(dw, be.ints(np.array([49, -50, 50], np.int32))))   # ids on the device
    assert np.array_equal(y[:2], dequantize(w.data[[49, 0]], qt, (2, w.shape[1])))
    assert np.all(np.isnan(y[2]))
    with pytest.raises(IndexError):
        be.get_rows(dw, np.array([50]))


@pytest.mark.parametrize("qt", [T.F16, T.BF16], ids=lambda t: t.name)
def test_get_rows_half_floats_every_bit_pattern(be_name, monkeypatch, qt):
    be = backend(be_name, monkeypatch)
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    y = be.to_numpy(be.get_rows(QTensor.from_buffer(qt, (1, 65536), bits), [0]))[0]
    ref = bits.view(np.float16).astype(np.float32) if qt == T.F16 else (bits.astype(np.uint32) << 16).view(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y), nan)
    assert np.array_equal(y[~nan].view(np.uint32), ref[~nan].view(np.uint32))


# --- activation rounding: bit-exact with quant.activations


def tricky_activations(rng, n: int) -> np.ndarray:
    """Rows of `n` with blocks that test the rounding: normal values, a zero block, ties at .5 after
    scaling, the largest |x| twice with opposite signs (the first one counts), a huge range."""
    x = rng.standard_normal((6, n)).astype(np.float32)
    x[1, :256] = 0.0
    x[2, :32] = np.arange(32, dtype=np.float32) - 15.5          # 127 / 16.5 * k.5 hits ties
    x[2, 32:64] = 127.0 * np.arange(32) / 31.0 - 63.5
    x[3, 5], x[3, 9] = -4.0, 4.0                                # opposite signs, same |x|
    x[3, 300], x[3, 260] = 3.0, -3.0
    x[4] *= np.float32(1e-30)
    x[5] *= np.logspace(-30, 5, n).astype(np.float32)        # f16(amax / 127) stays finite
    return x


@pytest.mark.parametrize("qt", [T.Q4_0, T.Q4_1, T.Q4_K, T.IQ4_XS, T.F16, T.BF16, T.F32], ids=lambda t: t.name)
def test_round_activations_bit_exact(be_name, monkeypatch, qt):
    be = backend(be_name, monkeypatch, "f32")      # rounding is asked for explicitly here
    x = tricky_activations(rng_for("gpu-round", qt), 512)
    y = be.to_numpy(be.round_activations(x, qt))
    ref = round_like_llama_cpp(x, qt)
    assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qt", [T.Q8_0, T.Q4_K], ids=lambda t: t.name)
def test_integer_path_on_tricky_activations(be_name, monkeypatch, qt):
    """The codes the integer path uses are the reference's: products agree on rounding edge cases."""
    be = backend(be_name, monkeypatch, "int")
    rng = rng_for("gpu-tricky", qt)
    w = random_qtensor(qt, (9, 512), rng)
    x = tricky_activations(rng, 512)
    y = be.to_numpy(be.matmul(x, be.upload(w)))
    assert rel_err(y, REF["llama.cpp"].matmul(x, w), abs_product(x, w)) < tol(w)


# --- unsupported types


def test_unsupported_type_names_it(be_name, monkeypatch):
    be = backend(be_name, monkeypatch)
    w = QTensor(T.IQ2_XXS, (4, 256), np.zeros((4, 66), np.uint8))
    with pytest.raises(KernelError, match="IQ2_XXS"):
        be.upload(w)
    with pytest.raises(KernelError, match="IQ2_XXS"):
        be.matmul(np.zeros(256, np.float32), w)
    with pytest.raises(KernelError, match="IQ2_XXS"):
        be.round_activations(np.zeros(256, np.float32), T.IQ2_XXS)


def test_get_rows_more_ids_than_one_grid_dimension(be_name, monkeypatch):
    """A prompt longer than CUDA's 65535 blocks in y: the kernel loops over the ids."""
    be = backend(be_name, monkeypatch)
    rng = rng_for("gpu-many-rows")
    w = random_qtensor(T.Q8_0, (300, 32), rng)
    ids = rng.integers(0, 300, 70_000)
    y = be.to_numpy(be.get_rows(be.upload(w), ids))
    assert np.array_equal(y, REF["f32"].get_rows(w, ids))
