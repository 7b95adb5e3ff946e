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
    """Q8_0 and Q8_1 (same values; Q8_1 also stores a rounded block sum, not modelled here)."""
    b = _blocks(np.asarray(x, np.float32), 32)
    amax = np.abs(b).max(-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(b * inv)
    return (d * q).reshape(x.shape)


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
