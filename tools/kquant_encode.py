"""Encode float weights as Q4_K, Q5_K and Q6_K blocks, for the tiny test models (gguf-py quantizes
the legacy types but not the K-quants).

Plain round-to-nearest encoders, not ggml's searched ones (`make_qkx2_quants`): per 32-element
sub-block a scale (and for Q4_K/Q5_K a min) from its range, the 6-bit (int8 for Q6_K) sub-block
scales relative to one f16 super-block scale, then each value rounded to the nearest level. The
blocks are valid GGML blocks that llama.cpp and `quant` decode identically; how close they come to
the floats does not matter for random test weights (typically within a quarter of a level).

    blocks = quantize(x, gguf.GGMLQuantizationType.Q4_K)   # x (..., n) float32, n % 256 == 0
"""

from __future__ import annotations

import gguf
import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block (n, 8) -> the 12 bytes get_scale_min_k4 unpacks."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return out


def _scale_min_k(x: np.ndarray, nmax: int):
    """(n, 8, 32) -> per-block f16 d, dmin, 6-bit sc, m (n, 8) and levels q (n, 8, 32) in 0..nmax
    with x ~= (d * sc) * q - (dmin * m)."""
    lo = np.minimum(x.min(-1), 0.0)                      # ggml keeps the min <= 0
    scale = (x.max(-1) - lo) / nmax
    d = _f16(scale.max(-1) / 63).astype(np.float32)      # (n,)
    dmin = _f16(-lo.min(-1) / 63).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin[:, None] > 0, np.rint(-lo / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        dl = (d[:, None] * sc)[..., None]
        ml = (dmin[:, None] * m)[..., None]
        q = np.where(dl > 0, np.rint((x + ml) / dl), 0).clip(0, nmax).astype(np.uint8)
    return d, dmin, sc, m, q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 8, 32) levels -> Q4_K's qs (n, 128): byte 32c + l = sub-block 2c (low) | 2c+1 (high)."""
    q = q & 15
    return (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(q.shape[0], 128)


def _q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _scale_min_k(x.reshape(-1, 8, 32), 15)
    return np.concatenate([_f16(d).view(np.uint8).reshape(-1, 2), _f16(dmin).view(np.uint8).reshape(-1, 2),
                           _pack_scales_k4(sc, m), _nibbles(q)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, m, q = _scale_min_k(x.reshape(-1, 8, 32), 31)
    qh = np.zeros((q.shape[0], 32), np.uint8)
    for b in range(8):                                  # qh[l] bit b = bit 4 of element 32b + l
        qh |= ((q[:, b] >> 4) & 1) << b
    return np.concatenate([_f16(d).view(np.uint8).reshape(-1, 2), _f16(dmin).view(np.uint8).reshape(-1, 2),
                           _pack_scales_k4(sc, m), qh, _nibbles(q)], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, 16, 16)
    s = np.abs(x).max(-1) / 31                          # per 16-element sub-block
    d = _f16(s.max(-1) / 127).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(s / d[:, None]), 0).clip(-128, 127).astype(np.int8)
        dl = (d[:, None] * sc)[..., None]
        q = (np.where(dl != 0, np.rint(x / dl), 0).clip(-32, 31) + 32).astype(np.uint8)
    q = q.reshape(-1, 2, 4, 32)                         # [half h, run k, l]: element 128h + 32k + l
    ql = np.concatenate([(q[:, :, 0] & 15) | ((q[:, :, 2] & 15) << 4),
                         (q[:, :, 1] & 15) | ((q[:, :, 3] & 15) << 4)], axis=2).reshape(-1, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6))
    return np.concatenate([ql, qh.reshape(-1, 64), sc.view(np.uint8), _f16(d).view(np.uint8).reshape(-1, 2)], axis=1)


_ENCODERS = {gguf.GGMLQuantizationType.Q4_K: _q4_k, gguf.GGMLQuantizationType.Q5_K: _q5_k,
             gguf.GGMLQuantizationType.Q6_K: _q6_k}


def quantize(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """x (..., n) float -> GGML blocks (..., n // block_elems * block_bytes) uint8, as gguf.quants.quantize."""
    if qtype not in _ENCODERS:
        return gguf.quants.quantize(np.asarray(x, np.float32), qtype)
    x = np.asarray(x, np.float32)
    if x.shape[-1] % QK_K:
        raise ValueError(f"{qtype.name} rows must be a multiple of {QK_K} long, not {x.shape[-1]}")
    blocks = _ENCODERS[qtype](x.reshape(-1, QK_K))
    return blocks.reshape(*x.shape[:-1], -1)
