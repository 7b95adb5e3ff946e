"""The NumPy dequantizers against gguf-py's (`gguf.quants.dequantize`, itself bit-exact with ggml).

Comparisons are on float32 bit patterns: values must match exactly, including -0.0 vs +0.0 and
+-inf; NaNs must appear in the same places (their payload bits are not compared, since NaN payload
propagation is a property of the CPU, not of the format).
"""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
from qdata import random_qtensor

import quant
from quant import GGML_BLOCK_SIZES, QK_K, GGMLType, QTensor, UnsupportedQuantType
from quant.kquants import get_scale_min_k4
from quant.nonlinear import KVALUES_IQ4NL, KVALUES_MXFP4, e8m0_to_fp32_half

ALL_TYPES = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
    GGMLType.IQ4_NL, GGMLType.IQ4_XS, GGMLType.MXFP4,
]
IDS = [t.name for t in ALL_TYPES]

# (rows, blocks per row): one block, one long row, several rows
LAYOUTS = [(1, 1), (1, 37), (5, 8)]


def _gguf_type(t: GGMLType) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[t.name]


def oracle(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """gguf-py's dequantization of raw storage `(…, row_bytes)` to float32 of `shape`."""
    raw = np.ascontiguousarray(raw).view(np.uint8)
    with np.errstate(all="ignore"):
        out = gguf.quants.dequantize(raw, _gguf_type(t))
    return np.asarray(out, dtype=np.float32).reshape(shape)


def ours(raw: np.ndarray, t: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    with np.errstate(all="ignore"):  # random scales overflow / give inf * 0 on purpose
        return quant.dequantize(raw, t, shape)


def assert_bits_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float32 and expected.dtype == np.float32
    assert actual.shape == expected.shape
    a_nan, e_nan = np.isnan(actual), np.isnan(expected)
    np.testing.assert_array_equal(a_nan, e_nan, err_msg="NaNs in different places")
    a_bits, e_bits = actual.view(np.uint32)[~a_nan], expected.view(np.uint32)[~e_nan]
    if not np.array_equal(a_bits, e_bits):
        bad = np.flatnonzero(a_bits != e_bits)
        i = bad[0]
        raise AssertionError(f"{bad.size} of {a_bits.size} values differ; first: {actual[~a_nan][i]!r} "
                             f"(0x{a_bits[i]:08x}) != {expected[~e_nan][i]!r} (0x{e_bits[i]:08x})")


def _row_shape(t: GGMLType, rows: int, blocks: int) -> tuple[int, int]:
    return rows, blocks * GGML_BLOCK_SIZES[t][0]


def test_all_types_registered():
    assert set(quant.SUPPORTED_TYPES) == set(ALL_TYPES)
    for t in ALL_TYPES:
        qt = quant.quant_type(t)
        assert (qt.block_elems, qt.block_bytes) == GGML_BLOCK_SIZES[t]
        assert (qt.block_elems, qt.block_bytes) == gguf.GGML_QUANT_SIZES[_gguf_type(t)]


# --- (a) arbitrary bytes: every bit pattern, including NaN/inf/subnormal scales ---------------------

@pytest.mark.parametrize("rows,blocks", LAYOUTS)
@pytest.mark.parametrize("t", ALL_TYPES, ids=IDS)
def test_random_bytes_match_gguf(t, rows, blocks):
    rng = np.random.default_rng([int(t), rows, blocks])
    shape = _row_shape(t, rows, blocks)
    raw = rng.integers(0, 256, size=(rows, blocks * GGML_BLOCK_SIZES[t][1]), dtype=np.uint8)
    assert_bits_equal(ours(raw, t, shape), oracle(raw, t, shape))


@pytest.mark.parametrize("t", ALL_TYPES, ids=IDS)
def test_million_elements_fast_and_exact(t):
    rng = np.random.default_rng(int(t))
    block_elems, block_bytes = GGML_BLOCK_SIZES[t]
    n_blocks = (1 << 20) // block_elems
    raw = rng.integers(0, 256, size=(n_blocks * block_bytes,), dtype=np.uint8)
    ours(raw[:block_bytes * 64], t, None)  # warm up
    t0 = time.perf_counter()
    got = ours(raw, t, (1 << 20,))
    elapsed = time.perf_counter() - t0
    assert_bits_equal(got, oracle(raw, t, (1 << 20,)))
    assert elapsed < 1.0, f"{t.name}: dequantizing 1M elements took {elapsed:.3f}s"


def test_dequantize_blocks_accepts_strided_input():
    """`dequantize_blocks` on a non-contiguous row selection (as `dequantize_rows` may produce)."""
    rng = np.random.default_rng(1)
    for t in ALL_TYPES:
        qt = quant.quant_type(t)
        if qt.storage_dtype != np.uint8:
            continue
        blocks = rng.integers(0, 256, size=(12, qt.block_bytes), dtype=np.uint8)
        with np.errstate(all="ignore"):
            assert_bits_equal(qt.dequantize_blocks(blocks[::3]), qt.dequantize_blocks(blocks[::3].copy()))


# --- (b) valid random tensors (finite, modest scales) -----------------------------------------------

@pytest.mark.parametrize("shape_blocks", [(1,), (7,), (4, 3), (2, 3, 2)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("t", ALL_TYPES, ids=IDS)
def test_random_valid_tensors_match_gguf(t, shape_blocks):
    rng = np.random.default_rng([int(t), len(shape_blocks)])
    shape = (*shape_blocks[:-1], shape_blocks[-1] * GGML_BLOCK_SIZES[t][0])
    qt = random_qtensor(t, shape, rng)
    got = qt.dequantize()
    assert got.shape == shape and got.dtype == np.float32
    assert np.isfinite(got).all()
    assert_bits_equal(got, oracle(qt.data, t, shape))


# --- (c) gguf-py's own quantization of normal data (types it can quantize) --------------------------

def _gguf_can_quantize(t: GGMLType) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, 256), np.float32), _gguf_type(t))
    except NotImplementedError:
        return False
    return True


QUANTIZABLE = [t for t in ALL_TYPES if _gguf_can_quantize(t)]


def test_gguf_quantizes_the_legacy_types():
    assert {GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0} <= set(QUANTIZABLE)


@pytest.mark.parametrize("t", QUANTIZABLE, ids=[t.name for t in QUANTIZABLE])
def test_quantized_normal_data_matches_gguf(t):
    rng = np.random.default_rng(int(t))
    x = (rng.standard_normal((6, 512)) * rng.uniform(0.01, 3.0, (6, 1))).astype(np.float32)
    x[0, :64] = 0.0  # an all-zero block: d = 0
    q = np.asarray(gguf.quants.quantize(x, _gguf_type(t)))
    got = ours(q.view(np.uint8), t, x.shape)
    assert_bits_equal(got, oracle(q, t, x.shape))
    assert np.isfinite(got).all()
    assert (got[0, :64] == 0).all()
    assert np.corrcoef(got.ravel(), x.ravel())[0, 1] > 0.98


# --- hand-checked layout details (independent of gguf-py) -------------------------------------------

def _f16_bytes(v: float) -> list[int]:
    return list(np.array([v], np.float16).view(np.uint8))


def test_q4_0_nibble_order():
    block = np.array([_f16_bytes(0.5) + [0x9A] + [0x88] * 15], np.uint8)  # qs[0]: lo 0xA, hi 0x9
    y = quant.dequantize(block, GGMLType.Q4_0)
    assert y[0] == (0xA - 8) * 0.5 and y[16] == (0x9 - 8) * 0.5
    assert (np.delete(y, [0, 16]) == 0).all()


def test_q5_0_high_bits_are_little_endian_u32():
    qh = (1 << 0) | (1 << 17) | (1 << 31)
    block = np.array([_f16_bytes(1.0) + list(qh.to_bytes(4, "little")) + [0] * 16], np.uint8)
    y = quant.dequantize(block, GGMLType.Q5_0)
    expected = np.full(32, -16.0, np.float32)
    expected[[0, 17, 31]] = 0.0
    np.testing.assert_array_equal(y, expected)


def test_q3_k_offset_applies_when_hmask_bit_is_clear():
    block = np.zeros((1, 110), np.uint8)
    block[0, 96:104] = 0x11  # low 4 bits of every 6-bit scale = 1 ...
    block[0, 104:108] = 0xAA  # ... and high 2 bits = 2: scale 33 -> sc - 32 = 1
    block[0, 108:110] = _f16_bytes(1.0)
    block[0, 0] = 0b0000_0101  # hmask[0]: high bit set for e = 0 and e = 64
    y = quant.dequantize(block, GGMLType.Q3_K)
    expected = np.full(QK_K, -4.0, np.float32)
    expected[[0, 64]] = 0.0
    np.testing.assert_array_equal(y, expected)


def test_get_scale_min_k4_matches_scalar_formula():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 256, size=(50, 12), dtype=np.uint8)
    sc, m = get_scale_min_k4(s)
    for i in range(s.shape[0]):
        q = [int(b) for b in s[i]]
        for j in range(8):
            if j < 4:
                want = (q[j] & 63, q[j + 4] & 63)
            else:
                want = ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
            assert (sc[i, j], m[i, j]) == want


def test_e8m0_half_edge_cases():
    e = np.array([0, 1, 2, 127, 128, 254, 255], np.uint8)
    got = e8m0_to_fp32_half(e)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.ldexp(np.float32(1), e.astype(np.int32) - 128).astype(np.float32))
    assert got.view(np.uint32)[0] == 0x00200000 and got.view(np.uint32)[1] == 0x00400000


def test_mxfp4_is_ocp_e2m1_times_2_pow_e_minus_127():
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    block = np.array([[130] + [(i | (15 - i) << 4) for i in range(16)]], np.uint8)
    y = quant.dequantize(block, GGMLType.MXFP4)
    np.testing.assert_array_equal(y[:16], e2m1 * 8)
    np.testing.assert_array_equal(y[16:], e2m1[::-1] * 8)


def test_tables_are_exported_int8():
    assert KVALUES_IQ4NL.dtype == np.int8 and KVALUES_MXFP4.dtype == np.int8
    assert KVALUES_IQ4NL.tolist() == [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    assert KVALUES_MXFP4.tolist() == [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]


# --- registry errors and QTensor ----------------------------------------------------------------------

@pytest.mark.parametrize("type_id,name", [(GGMLType.IQ2_XXS, "IQ2_XXS"), (int(GGMLType.NVFP4), "NVFP4"),
                                          (99, "unknown type 99")])
def test_unsupported_types_raise_naming_the_type(type_id, name):
    with pytest.raises(UnsupportedQuantType, match=name) as info:
        quant.quant_type(type_id)
    assert info.value.type_id == int(type_id)
    assert isinstance(info.value, NotImplementedError)
    with pytest.raises(UnsupportedQuantType, match=name):
        quant.dequantize(np.zeros(64, np.uint8), type_id)


@pytest.mark.parametrize("t", [GGMLType.F32, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.MXFP4],
                         ids=lambda t: t.name)
def test_qtensor_from_buffer(t):
    rng = np.random.default_rng(5)
    block_elems, block_bytes = GGML_BLOCK_SIZES[t]
    n_in = 2 * QK_K
    shape = (6, n_in)
    row_bytes = n_in // block_elems * block_bytes
    raw = rng.integers(0, 256, size=6 * row_bytes, dtype=np.uint8)
    if t == GGMLType.F32:
        raw = rng.standard_normal(6 * n_in).astype(np.float32).view(np.uint8)
    qt = QTensor.from_buffer(t, shape, raw, name="w")
    assert qt.qtype == t and qt.shape == shape and qt.name == "w"
    assert qt.row_bytes == row_bytes and qt.nbytes == raw.nbytes
    assert np.shares_memory(qt.data, raw)
    if quant.quant_type(t).storage_dtype == np.uint8:
        assert qt.data.shape == (6, row_bytes) and qt.data.dtype == np.uint8
    else:
        assert qt.data.shape == shape
    with np.errstate(all="ignore"):
        full = qt.dequantize()
        assert full.shape == shape
        assert_bits_equal(full, oracle(raw.reshape(6, row_bytes), t, shape))
        rows = [4, 0, 4]
        assert_bits_equal(qt.dequantize_rows(rows), full[rows])
        assert_bits_equal(qt.dequantize_rows(np.array([2])), full[[2]])


@pytest.mark.parametrize("t", [GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.IQ4_XS], ids=lambda t: t.name)
def test_row_length_must_be_whole_blocks(t):
    block_elems, block_bytes = GGML_BLOCK_SIZES[t]
    n_in = block_elems + 16
    with pytest.raises(ValueError, match=t.name):
        quant.quant_type(t).row_bytes(n_in)
    with pytest.raises(ValueError):
        QTensor.from_buffer(t, (2, n_in), np.zeros(4 * block_bytes, np.uint8))
    with pytest.raises(ValueError, match=t.name):
        quant.dequantize(np.zeros(block_bytes + 1, np.uint8), t)
