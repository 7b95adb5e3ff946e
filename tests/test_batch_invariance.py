"""Batch invariance of the products on the CPU backends: with a fixed `path` ("rows" for decode tokens,
"tiles" for prompt tokens), a token's row is bit for bit what the same path gives it in a call of any
other size or company. The server's batched steps (engine/batching.py) rely on it to give a request the
same tokens alone and beside others; /props reports it as `batch_invariant`."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.numba_cpu import NumbaBackend
from kernels.reference import NumpyBackend
from quant import GGMLType, QTensor

from qdata import random_qtensor

from kernels.numba_cpu.products import ROW_KERNELS  # noqa: E402

TYPES = list(ROW_KERNELS)  # every type the CPU backend multiplies


@pytest.fixture(scope="module", params=["cpu", "numpy"])
def be(request):
    return NumbaBackend(n_threads=2) if request.param == "cpu" else NumpyBackend()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("path", ["rows", "tiles"])
def test_a_row_does_not_depend_on_the_call(be, qtype, path):
    rng = np.random.default_rng(int(qtype))
    w = be.upload(random_qtensor(qtype, (72, 256), rng))
    x = rng.standard_normal((21, 256)).astype(np.float32)
    alone = np.stack([be.matmul(x[i:i + 1], w, path=path)[0] for i in range(len(x))])
    # (groups of 1-7 tokens: the integer kernels take 4 at a time and a last 1, 2 or 3 apart)
    for a, b in [(0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (0, 7), (3, 19), (0, 21)]:
        np.testing.assert_array_equal(be.matmul(x[a:b], w, path=path), alone[a:b], err_msg=f"rows {a}:{b}")


@pytest.mark.parametrize("qtype", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_rows_of_any_length(qtype):
    """Float rows need not be whole 32-lane chunks: the tail goes into lane 0 whether a row is dotted
    alone or unpacked once for several tokens (Numba; equal to the single-token path too)."""
    be = NumbaBackend(n_threads=2)
    rng = np.random.default_rng(3)
    w = be.upload(random_qtensor(qtype, (9, 100), rng))
    x = rng.standard_normal((6, 100)).astype(np.float32)
    alone = np.stack([be.matmul(x[i:i + 1], w)[0] for i in range(len(x))])
    np.testing.assert_array_equal(be.matmul(x, w, path="rows"), alone)
    np.testing.assert_array_equal(be.matmul(x[:3], w), alone[:3])


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.MXFP4, GGMLType.Q8_0, GGMLType.Q4_1], ids=lambda t: t.name)
@pytest.mark.parametrize("path", ["rows", "tiles"])
def test_an_expert_row_does_not_depend_on_the_call(be, qtype, path):
    rng = np.random.default_rng(7)
    w = be.upload(random_qtensor(qtype, (4, 40, 256), rng))
    x = rng.standard_normal((13, 256)).astype(np.float32)
    ids = rng.integers(0, 4, (13, 2)).astype(np.int32)
    ids[:, 1] = (ids[:, 0] + 1) % 4
    alone = np.concatenate([be.matmul_experts(x[i:i + 1], w, ids[i:i + 1], path=path) for i in range(13)])
    for a, b in [(0, 6), (2, 13), (0, 13)]:
        np.testing.assert_array_equal(be.matmul_experts(x[a:b], w, ids[a:b], path=path), alone[a:b])


def test_unknown_path_is_refused():
    be = NumbaBackend(n_threads=1)
    w = be.upload(random_qtensor(GGMLType.Q8_0, (8, 64), np.random.default_rng(0)))
    with pytest.raises(ValueError, match="unknown product path"):
        be.matmul(np.zeros((2, 64), np.float32), w, path="fast")
