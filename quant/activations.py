"""How llama.cpp's CPU backend rounds the activations it multiplies quantized weights by.

ggml never multiplies a quantized weight by float32 activations: `ggml_compute_forward_mul_mat`
first converts the activation rows to the weight type's *vec_dot type* (Q8_0 for Q4_0/Q5_0/Q8_0/
IQ4_NL/MXFP4, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants and IQ4_XS, F16 for F16, BF16 for BF16) and
takes integer (or half) dot products. That rounding is the largest difference between llama.cpp's
logits and exact float32 ones (SmolLM2 Q8_0: cosine 0.990 exact vs 0.99998 rounded).

We want llama.cpp's answers token for token, so the engine rounds activations the same way before
its float products ("fake quantization"): the value each activation takes, `d * q`, is exactly what
llama.cpp's integer kernels see; only the summation order of the float products differs.

This module is the NumPy reference; backends carry fast versions tested against it.
The x86 (AVX2/AVX-512) paths of ggml are the ones matched:
  Q8_0/Q8_1  d = amax / 127 stored as f16, q = round-half-even(x * (127 / amax))
  Q8_K       d = 1 / iscale in float32 with iscale = -127 / (the signed value of largest |x|),
             q = min(127, round-half-even(iscale * x))   (ggml's nearest_int)

Q8_1 also stores a block sum, and it is not the sum of the block's values: x86 `quantize_row_q8_1`
computes `s = f16(d32 * sum(q))` with the *unrounded* float32 scale d32 = amax / 127 (the f16 d is
the one the values use) and the product rounded to f16. The Q4_1/Q5_1 dot products
(`ggml_vec_dot_q4_1_q8_1`, `..._q5_1_q8_1`) take the weight offsets m through it:

    w . x = sum over blocks b of  d_w[b] * d_x[b] * sum_j(q_w[j] * q_x[j])  +  m_w[b] * s[b]

so a product with Q4_1/Q5_1 weights sees `s[b]` (`q8_1_block_sums`) where an exact one sees
`sum_j d_x[b] * q_x[j]`; the difference (up to 2**-11 of |s|, times m) moved SmolLM2 Q5_1's logits
from cosine 0.979 to 0.994 against llama.cpp's at its worst position. Backends therefore multiply
the two parts of such weights separately: the scaled codes `d_w * q_w` by the rounded x, the
offsets `m_w` by s (`split_offsets` gives the two parts).
"""

from __future__ import annotations

import numpy as np

from .ggml_types import QK_K, GGMLType

Q8_0, Q8_1, Q8_K, F16, BF16, NONE = "q8_0", "q8_1", "q8_k", "f16", "bf16", "none"

# weight type -> the type ggml converts activations to (ggml-cpu.c type_traits_cpu[].vec_dot_type)
VEC_DOT_TYPE = {
    GGMLType.F32: NONE,
    GGMLType.F16: F16,
    GGMLType.BF16: BF16,
    GGMLType.Q4_0: Q8_0, GGMLType.Q5_0: Q8_0, GGMLType.Q8_0: Q8_0,
    GGMLType.IQ4_NL: Q8_0, GGMLType.MXFP4: Q8_0,
    GGMLType.Q4_1: Q8_1, GGMLType.Q5_1: Q8_1,
    GGMLType.Q2_K: Q8_K, GGMLType.Q3_K: Q8_K, GGMLType.Q4_K: Q8_K, GGMLType.Q5_K: Q8_K,
    GGMLType.Q6_K: Q8_K, GGMLType.IQ4_XS: Q8_K,
}


def vec_dot_type(weight_type) -> str:
    return VEC_DOT_TYPE.get(GGMLType(weight_type), NONE)


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[-1] % size:
        raise ValueError(f"activation rows of {x.shape[-1]} values do not split into blocks of {size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def round_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 and Q8_1 (same values; Q8_1's block sums: `q8_1_block_sums`)."""
    b = _blocks(np.asarray(x, np.float32), 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(b * inv)
    return (d * q).reshape(x.shape)


def q8_1_block_sums(x: np.ndarray) -> np.ndarray:
    """llama.cpp's Q8_1 block sums of x (..., n_in) -> (..., n_in / 32) float32 (values of f16s):
    s = f16(d32 * sum(q)) with d32 = amax / 127 in float32, not the f16 d (see the module doc)."""
    b = _blocks(np.asarray(x, np.float32), 32)
    amax = np.abs(b).max(-1)
    d32 = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q_sum = np.rint(b * inv[..., None]).sum(-1)                   # an exact integer, |q_sum| <= 4064
    with np.errstate(over="ignore"):
        return (d32 * q_sum.astype(np.float32)).astype(np.float16).astype(np.float32)


def split_offsets(w) -> tuple[np.ndarray, np.ndarray]:
    """The two parts of a Q4_1/Q5_1 weight (..., n_out, n_in): (d * q as float32 (..., n_out, n_in),
    the block offsets m as float32 (..., n_out, n_in / 32)); the weight is their sum, m repeated
    over each block's 32 elements."""
    from .tensor import QTensor

    if w.qtype not in WITH_OFFSETS:
        raise ValueError(f"split_offsets: {GGMLType(w.qtype).name} weights have no block offsets")
    bb = 20 if w.qtype == GGMLType.Q4_1 else 24
    blocks = np.array(w.data).reshape(*w.shape[:-1], -1, bb)        # a copy: m is zeroed below
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    blocks[..., 2:4] = 0
    return QTensor.from_buffer(w.qtype, w.shape, blocks).dequantize(), m


# weight types whose llama.cpp dot product takes the offsets through Q8_1's block sums
WITH_OFFSETS = (GGMLType.Q4_1, GGMLType.Q5_1)


def round_q8_k(x: np.ndarray) -> np.ndarray:
    b = _blocks(np.asarray(x, np.float32), QK_K)
    idx = np.abs(b).argmax(-1)[..., None]
    signed_max = np.take_along_axis(b, idx, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0)).astype(np.float32)
        d = np.where(signed_max != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(iscale * b), 127)
    return (d * q).reshape(x.shape)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16 (ggml_compute_fp32_to_bf16), back as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    r = np.where((u & 0x7FFFFFFF) > 0x7F800000, (u | 0x400000) >> 16 << 16, r)  # NaN stays quiet NaN
    return r.astype(np.uint32).view(np.float32).reshape(np.shape(x))


ROUNDERS = {
    Q8_0: round_q8_0,
    Q8_1: round_q8_0,
    Q8_K: round_q8_k,
    F16: lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32),
    BF16: round_bf16,
    NONE: lambda x: np.asarray(x, np.float32),
}


def round_like_llama_cpp(x: np.ndarray, weight_type) -> np.ndarray:
    """`x` (..., n_in) as llama.cpp's CPU kernels see it when multiplying by a `weight_type` matrix."""
    return ROUNDERS[vec_dot_type(weight_type)](x)
