"""The Numba CPU products (kernels/numba_cpu) against the NumPy reference backend, for every type.

Covers all 16 types: matrix-vector (1-D x) and batched products (3, 17 and 70 tokens take the
dequantize-a-tile path), odd row counts (1, 7, 33: not multiples of the threads or of the 4x4
register blocks), rows of one and several blocks, SmolLM2-sized matrices for the hot types, MoE
products (4 experts, top-2, x shared or per slot, experts with few and many tokens in one call),
embedding lookups and the unsupported-type error.

Weights are random but valid GGML blocks (tests/qdata.py). Products must match the reference to a
relative error ||y - y_ref|| / ||y_ref|| < 1e-5 (both sum in float32, in different orders).
When a sum cancels (a lone output of a 1-row weight can be 100x smaller than its terms) the float32
rounding of either side alone exceeds that, so the denominator is never taken below the typical size
of a product, || |x| @ |W|^T || / sqrt(n_in). Embedding lookups dequantize like the reference.

Numba compiles two drivers per type on first use (2-3 s per type, ~50 s for the file on 2 cores)
and caches them on disk (kernels/numba_cpu/__pycache__): a second run takes a few seconds.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from kernels.base import KernelError
from kernels.numba_cpu import NumbaBackend
from kernels.numba_cpu import products
from kernels.reference import NumpyBackend
from quant import GGMLType, QTensor, quant_type
from qdata import random_qtensor

T = GGMLType
ALL_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4]
HOT_TYPES = [T.Q4_0, T.Q8_0, T.Q4_K, T.Q6_K, T.MXFP4]
TOL = 1e-5

# (n_out, n_in in blocks): one row; row counts that are not a multiple of the thread count; one
# block and several blocks per row
SHAPES = [(1, 3), (7, 1), (33, 4)]
N_TOKS = [None, 1, 3, 17, 70]   # None: a 1-D x (decode); 17 and 70 take the batched paths

REF = NumpyBackend()
CPU = NumbaBackend(n_threads=2)


def unit(qt: GGMLType) -> int:
    """Elements per 'block' of a row: the block size, or an odd 37 for the plain float types."""
    n = quant_type(qt).block_elems
    return 37 if n == 1 else n


def rng_for(*key) -> np.random.Generator:
    """A generator seeded from the test's parameters (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rel_err(y, y_ref, y_abs=None) -> float:
    """||y - y_ref|| / ||y_ref||; y_abs (the same product with |x| and |W|) bounds the denominator
    from below by the typical magnitude of a product when the sums cancel."""
    y, y_ref = np.asarray(y, np.float64), np.asarray(y_ref, np.float64)
    den = np.linalg.norm(y_ref)
    if y_abs is not None:
        den = max(den, np.linalg.norm(y_abs))
    return float(np.linalg.norm(y - y_ref) / max(den, 1e-30))


def abs_product(x, w: QTensor, ids=None) -> np.ndarray:
    """|x| @ |W|^T / sqrt(n_in): the typical magnitude of each output when its terms do not cancel
    (for experts: per (token, slot), with the expert ids picks)."""
    wa = np.abs(w.dequantize().astype(np.float64))
    xa = np.abs(np.asarray(x, np.float64))
    if ids is None:
        return xa @ wa.T / np.sqrt(w.shape[-1])
    if xa.ndim == 2:
        xa = np.broadcast_to(xa[:, None, :], (*ids.shape, xa.shape[-1]))
    return np.einsum("tui,tuoi->tuo", xa, wa[ids]) / np.sqrt(w.shape[-1])


def check_matmul(be, w: QTensor, n_tok, rng):
    n_in = w.shape[1]
    x = rng.standard_normal(n_in if n_tok is None else (n_tok, n_in)).astype(np.float32)
    y, y_ref = be.matmul(x, w), REF.matmul(x, w)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == y_ref.shape
    assert np.all(np.isfinite(y))
    assert rel_err(y, y_ref, abs_product(x, w)) < TOL


@pytest.mark.parametrize("n_tok", N_TOKS, ids=lambda n: "x1d" if n is None else f"tok{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}blk")
@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_matmul(qt, shape, n_tok):
    rng = rng_for(qt, shape, n_tok)
    w = random_qtensor(qt, (shape[0], shape[1] * unit(qt)), rng)
    check_matmul(CPU, w, n_tok, rng)


def real_shapes(qt):
    """SmolLM2-135M-like projections (576 <-> 1536; K-quant rows need n_in % 256 == 0)."""
    return [(576, 1536), (1536, 768) if quant_type(qt).block_elems == 256 else (1536, 576)]


@pytest.mark.parametrize("n_tok", [None, 17, 70], ids=lambda n: "x1d" if n is None else f"tok{n}")
@pytest.mark.parametrize("qt,shape", [(qt, s) for qt in HOT_TYPES for s in real_shapes(qt)],
                         ids=lambda v: v.name if isinstance(v, GGMLType) else f"{v[0]}x{v[1]}")
def test_matmul_real_shapes(qt, shape, n_tok):
    rng = rng_for(qt, shape, n_tok)
    check_matmul(CPU, random_qtensor(qt, shape, rng), n_tok, rng)


def test_matmul_one_thread_and_strided_x():
    rng = rng_for("threads")
    w = random_qtensor(T.Q4_K, (33, 512), rng)
    check_matmul(NumbaBackend(n_threads=1), w, 3, rng)
    x = rng.standard_normal((512, 5)).astype(np.float32).T   # non-contiguous (5, 512)
    assert rel_err(CPU.matmul(x, w), REF.matmul(x, w), abs_product(x, w)) < TOL
    x64 = x.astype(np.float64)                                # other dtypes are converted
    assert rel_err(CPU.matmul(x64, w), REF.matmul(x, w), abs_product(x, w)) < TOL


def test_threads_and_readonly_weights_give_identical_results(monkeypatch):
    """Rows are computed the same way whatever the thread split; weights may be read-only views
    (memory-mapped files are)."""
    monkeypatch.setattr(products, "PARALLEL_MIN_WORK", 0)    # use the threads even for small products
    rng = rng_for("identical")
    w = random_qtensor(T.Q4_K, (37, 512), rng)
    data = w.data.copy()
    data.flags.writeable = False
    w_ro = QTensor.from_buffer(T.Q4_K, w.shape, data)
    assert CPU.upload(w_ro) is w_ro
    for n_tok in (None, 6):
        x = rng.standard_normal(512 if n_tok is None else (n_tok, 512)).astype(np.float32)
        y1 = NumbaBackend(n_threads=1).matmul(x, w)
        y2 = NumbaBackend(n_threads=2).matmul(x, w_ro)
        assert np.array_equal(y1, y2)


def test_matmul_shape_mismatch():
    w = random_qtensor(T.Q8_0, (4, 64), rng_for("mismatch"))
    with pytest.raises(ValueError):
        CPU.matmul(np.zeros(32, np.float32), w)


# --- experts (MoE): 4 experts, top-2 per token; skewed choices so that a batch mixes experts with
# a few tokens (dequantize-and-dot driver) and experts with many (tiles + BLAS)


def expert_ids(rng, n_tok: int, n_expert: int = 4, n_used: int = 2) -> np.ndarray:
    p = np.array([0.6, 0.3, 0.07, 0.03])[:n_expert]
    p = p / p.sum()
    return np.stack([rng.choice(n_expert, n_used, replace=False, p=p) for _ in range(n_tok)]).astype(np.int32)


@pytest.mark.parametrize("n_tok", [1, 3, 17, 70], ids=lambda n: f"tok{n}")
@pytest.mark.parametrize("layout", ["shared", "per_slot"])
@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_matmul_experts(qt, layout, n_tok):
    rng = rng_for(qt, layout, n_tok)
    n_expert, n_out, n_in = 4, 33, 2 * unit(qt)
    w = random_qtensor(qt, (n_expert, n_out, n_in), rng)
    ids = expert_ids(rng, n_tok)
    shape = (n_tok, n_in) if layout == "shared" else (n_tok, ids.shape[1], n_in)
    x = rng.standard_normal(shape).astype(np.float32)
    y, y_ref = CPU.matmul_experts(x, w, ids), REF.matmul_experts(x, w, ids)
    assert y.shape == y_ref.shape == (n_tok, 2, n_out) and y.dtype == np.float32
    assert rel_err(y, y_ref, abs_product(x, w, ids)) < TOL


def test_expert_groups_are_dealt_evenly_to_two_threads():
    """matmul_experts reorders its expert groups so that the two halves of its parallel loop (numba's
    OpenMP layer splits it statically) cost alike: still every pair once, under its own expert; in
    expert order the busier half has ~6% more than the mean on random MoE-prompt routings, after ~0.4%."""
    from kernels.numba_cpu.products import _balanced, _group_cost

    def busier(cost):  # the busier half's cost over the mean, an odd count's middle group split
        h = len(cost) / 2
        first = cost[:int(h)].sum() + (cost[int(h)] / 2 if len(cost) % 2 else 0)
        return max(first, cost.sum() - first) / (cost.sum() / 2)

    rng = rng_for("balance")
    before, after = [], []
    for _ in range(300):
        flat = rng.integers(0, 32, 64)  # 16 tokens x top-4 of 32 experts
        order = np.argsort(flat, kind="stable")
        experts, counts = np.unique(flat[order], return_counts=True)
        e2, c2, o2 = _balanced(experts, counts, order, 4, 2)
        assert sorted(e2) == list(experts) and np.array_equal(np.sort(o2), np.arange(64))
        assert np.array_equal(flat[o2], np.repeat(e2, c2))  # each pair in its expert's group
        before.append(busier(_group_cost(counts, 4).astype(float)))
        after.append(busier(_group_cost(c2, 4).astype(float)))
    assert np.mean(after) < 1.01 < np.mean(before)


def test_matmul_experts_reads_only_chosen_experts():
    """Experts never chosen may hold anything (here NaN scales): they must not be read."""
    rng = rng_for("chosen")
    w = random_qtensor(T.Q8_0, (4, 16, 64), rng)
    data = w.data.copy()
    data[[0, 2]] = 0xFF                       # f16 0xFFFF = NaN scales in experts 0 and 2
    w = QTensor.from_buffer(T.Q8_0, w.shape, data)
    for n_tok in (1, 5, 40):
        ids = np.stack([rng.permutation([1, 3]) for _ in range(n_tok)]).astype(np.int32)
        x = rng.standard_normal((n_tok, 64)).astype(np.float32)
        y = CPU.matmul_experts(x, w, ids)
        assert np.all(np.isfinite(y))
        ref = REF.matmul_experts(x, w, ids)
        assert np.all(np.isfinite(ref))
        assert rel_err(y, ref) < TOL


# --- embedding lookup


@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda t: t.name)
def test_get_rows(qt):
    rng = rng_for(qt, "rows")
    w = random_qtensor(qt, (50, 3 * unit(qt)), rng)
    for ids in (np.array([3, 0, 49, 3, 7]), np.array([[1, 2], [-1, 0]]), np.array([5], np.int32)):
        y, y_ref = CPU.get_rows(w, ids), REF.get_rows(w, ids)
        assert y.shape == y_ref.shape and y.dtype == np.float32
        assert rel_err(y, y_ref) < 1e-6
    with pytest.raises(IndexError):
        CPU.get_rows(w, np.array([50]))


# --- the row kernels and their registry


def test_registry_covers_all_types():
    assert set(products.ROW_KERNELS) == set(ALL_TYPES)
    for dot, deq in products.ROW_KERNELS.values():
        assert callable(dot) and callable(deq)


def test_row_kernel_direct():
    """The public per-row kernels, called on their own (not through a driver)."""
    from kernels.numba_cpu.rows_legacy import dequant_row_q4_0, dot_q4_0

    rng = rng_for("direct")
    w = random_qtensor(T.Q4_0, (2, 96), rng)
    x = rng.standard_normal(96).astype(np.float32)
    ref = w.dequantize()
    out = np.empty(96, np.float32)
    dequant_row_q4_0(w.data[1], out)
    assert np.array_equal(out, ref[1])
    assert abs(dot_q4_0(w.data[1], x) - float(ref[1] @ x)) < 1e-5 * np.linalg.norm(ref[1]) * np.linalg.norm(x)


@pytest.mark.parametrize("qt", [T.F16, T.BF16], ids=lambda t: t.name)
def test_half_float_widening_every_bit_pattern(qt):
    """F16 and BF16 rows are widened with integer code: check all 65536 bit patterns (subnormals,
    infinities, NaNs included)."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    w = QTensor.from_buffer(qt, (1, 65536), bits)
    y = CPU.get_rows(w, [0])[0]
    ref = bits.view(np.float16).astype(np.float32) if qt == T.F16 else (bits.astype(np.uint32) << 16).view(np.float32)
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(y), nan)
    assert np.array_equal(y[~nan], ref[~nan])


def test_unsupported_type_names_it():
    w = QTensor(T.IQ2_XXS, (4, 256), np.zeros((4, 66), np.uint8))
    with pytest.raises(KernelError, match="IQ2_XXS"):
        CPU.matmul(np.zeros(256, np.float32), w)
    with pytest.raises(KernelError, match="IQ2_XXS"):
        CPU.upload(w)
