"""The K-quants: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (256-element super-blocks of 16 or 8 sub-blocks).

Every dequantizer is vectorised over super-blocks and follows ggml's `dequantize_row_q*_K`
(ggml-quants.c) operation by operation in float32: first the per-sub-block factors `dl = d * sc` (and
`ml = dmin * m`), each rounded to float32, then `y = dl * q` (`- ml`). Computing `d * (sc * q)` instead
would round differently and not be bit-exact. `dl * q - ml` is two roundings, not a fused multiply-add
(as gguf-py; a C compiler allowed to contract ggml's expression into an FMA, e.g. on AArch64, would differ
in the last bit for some elements).

Common index names for an element `e` in 0..255 of a super-block: `h = e // 128` (which half),
`k = (e % 128) // 32` (which 32-run within the half), `l = e % 32`.
"""

from __future__ import annotations

import numpy as np

from .ggml_types import QK_K, GGMLType, QuantType
from .legacy import f16_field, split_nibbles

K_SCALE_SIZE = 12  # bytes of packed 6-bit scales and mins in Q4_K / Q5_K

_SHIFTS_2BIT = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
_SHIFTS_1BIT = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """2-bit fields of runs of 32 bytes: `(n, k * 32)` uint8 -> `(n, k, 4, 32)`, where
    `[i, c, s, l] = (qs[i, 32c + l] >> 2s) & 3`."""
    n = qs.shape[0]
    return (qs.reshape(n, -1, 1, 32) >> _SHIFTS_2BIT) & np.uint8(3)


def _bit_planes(mask: np.ndarray) -> np.ndarray:
    """The 8 bit planes of a 32-byte mask: `(n, 32)` uint8 -> `(n, 8, 32)` with `[i, b, l] = (mask[i, l] >> b) & 1`.
    In Q3_K and Q5_K plane `b` holds the extra bit of elements `32b .. 32b + 31`."""
    n = mask.shape[0]
    return (mask.reshape(n, 1, 32) >> _SHIFTS_1BIT) & np.uint8(1)


def get_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack Q4_K/Q5_K's 12 scale bytes into 8 six-bit scales and 8 six-bit mins, each `(n, 8)` uint8.

    ggml's `get_scale_min_k4(j, s)` for all j at once. Bit layout (sc_j = scale j, m_j = min j):

        byte  0..3 : [ sc_{4+i} bits 4-5 | sc_i (6 bits) ]      i = byte
        byte  4..7 : [ m_{4+i}  bits 4-5 | m_i  (6 bits) ]      i = byte - 4
        byte 8..11 : [ m_{4+i} bits 0-3  | sc_{4+i} bits 0-3 ]  i = byte - 8
    """
    a, b, c = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)
    return sc, m


class Q2_K(QuantType, qtype=GGMLType.Q2_K, block_elems=QK_K, block_bytes=QK_K // 16 + QK_K // 4 + 2 + 2):
    """2-bit values in 16 sub-blocks of 16, each with a 4-bit scale and 4-bit min:
    `y = (d * sc) * q - (dmin * m)`. Layout: scales[16], qs[64], d f16, dmin f16."""

    # byte:  0              16                80     82      84
    #        | scales[16]   | qs[64]          | d    | dmin  |
    # scales[i]:      [ m_i (4 bits) | sc_i (4 bits) ]   for sub-block i = e // 16
    # qs[32h + l]:    [ e=128h+96+l | e=128h+64+l | e=128h+32+l | e=128h+l ]   (2 bits each, high..low)
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        scales, qs = blocks[:, :16], blocks[:, 16:80]
        d, dmin = f16_field(blocks, 80), f16_field(blocks, 82)
        dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]  # (n, 16, 1)
        ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
        q = _crumbs(qs).reshape(n, 16, 16).astype(np.float32)  # [h, k, l] order = element order
        return (dl * q - ml).reshape(n, QK_K)


class Q3_K(QuantType, qtype=GGMLType.Q3_K, block_elems=QK_K, block_bytes=QK_K // 8 + QK_K // 4 + 12 + 2):
    """3-bit values (2 low bits + 1 high bit) in 16 sub-blocks of 16 with signed 6-bit scales:
    `y = (d * (sc - 32)) * (q_lo - (0 if hbit else 4))`. Layout: hmask[32], qs[64], scales[12], d f16."""

    # byte:  0            32            96            108   110
    #        | hmask[32]  | qs[64]      | scales[12]  | d   |
    # qs[32h + l]:  2-bit low parts, same packing as Q2_K: bits 2k..2k+1 -> e = 128h + 32k + l
    # hmask[l]:     bit b -> high bit of e = 32b + l; the value is q_lo - 4 when that bit is 0 (!)
    # scales (6 bits each, sc_0..sc_15):
    #   byte 0..7  : [ sc_{8+i} bits 0-3 | sc_i bits 0-3 ]                        i = byte
    #   byte 8..11 : [ sc_{12+i} | sc_{8+i} | sc_{4+i} | sc_i ]  bits 4-5 of each   i = byte - 8
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        hmask, qs, scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
        d = f16_field(blocks, 108)
        lo = split_nibbles(scales[:, :8], 8).reshape(n, 16)  # sc_0..7 low nibbles, then sc_8..15
        hi = (scales[:, 8:12].reshape(n, 1, 4) >> _SHIFTS_2BIT[0]) & np.uint8(3)  # [shift s, byte i]
        hi = hi.reshape(n, 16)  # index 4s + i = sub-block
        sc = (lo | (hi << np.uint8(4))).view(np.int8) - np.int8(32)
        dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 16, 1)
        q_lo = _crumbs(qs).reshape(n, 8, 32).view(np.int8)
        offset = (_bit_planes(hmask) ^ np.uint8(1)).view(np.int8) << np.int8(2)  # 4 where the bit is 0
        q = (q_lo - offset).reshape(n, 16, 16).astype(np.float32)
        return (dl * q).reshape(n, QK_K)


class Q4_K(QuantType, qtype=GGMLType.Q4_K, block_elems=QK_K, block_bytes=2 + 2 + K_SCALE_SIZE + QK_K // 2):
    """4-bit values in 8 sub-blocks of 32 with 6-bit scales and mins: `y = (d * sc) * q - (dmin * m)`.
    Layout: d f16, dmin f16, scales[12] (see `get_scale_min_k4`), qs[128]."""

    # byte:  0      2      4             16                 144
    #        | d    | dmin | scales[12]  | qs[128]          |
    # qs[32c + l] (c = 0..3): [ hi nibble -> e = 64c + 32 + l | lo nibble -> e = 64c + l ]
    # so sub-block j = e // 32 is the low (j even) or high (j odd) nibbles of bytes 32(j//2) .. +31.
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d, dmin = f16_field(blocks, 0), f16_field(blocks, 2)
        sc, m = get_scale_min_k4(blocks[:, 4:16])
        dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 8, 1)
        ml = (dmin * m.astype(np.float32))[:, :, None]
        q = split_nibbles(blocks[:, 16:], 32).reshape(n, 8, 32).astype(np.float32)
        return (dl * q - ml).reshape(n, QK_K)


class Q5_K(QuantType, qtype=GGMLType.Q5_K, block_elems=QK_K, block_bytes=2 + 2 + K_SCALE_SIZE + QK_K // 8 + QK_K // 2):
    """5-bit values in 8 sub-blocks of 32 with 6-bit scales and mins: `y = (d * sc) * q - (dmin * m)`.
    Layout: d f16, dmin f16, scales[12] (as Q4_K), qh[32], qs[128] (as Q4_K)."""

    # byte:  0      2      4             16        48                 176
    #        | d    | dmin | scales[12]  | qh[32]  | qs[128]          |
    # qs:     low 4 bits, packed exactly as Q4_K
    # qh[l]:  bit b -> bit 4 of e = 32b + l
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d, dmin = f16_field(blocks, 0), f16_field(blocks, 2)
        sc, m = get_scale_min_k4(blocks[:, 4:16])
        dl = (d * sc.astype(np.float32))[:, :, None]  # (n, 8, 1)
        ml = (dmin * m.astype(np.float32))[:, :, None]
        lo = split_nibbles(blocks[:, 48:], 32).reshape(n, 8, 32)
        hi = _bit_planes(blocks[:, 16:48])
        q = (lo | (hi << np.uint8(4))).astype(np.float32)
        return (dl * q - ml).reshape(n, QK_K)


class Q6_K(QuantType, qtype=GGMLType.Q6_K, block_elems=QK_K, block_bytes=QK_K // 2 + QK_K // 4 + QK_K // 16 + 2):
    """6-bit values around 32 in 16 sub-blocks of 16 with int8 scales: `y = (d * sc) * (q - 32)`.
    Layout: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d f16."""

    # byte:  0          128        192           208   210
    #        | ql[128]  | qh[64]   | scales[16]  | d   |
    # for half h (e = 128h + 32k + l):
    #   ql[64h + l]:       [ hi nibble -> k=2 | lo nibble -> k=0 ]   (low 4 bits of q)
    #   ql[64h + 32 + l]:  [ hi nibble -> k=3 | lo nibble -> k=1 ]
    #   qh[32h + l]:       [ k=3 | k=2 | k=1 | k=0 ]  2 bits each, high..low (bits 4-5 of q)
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        ql, qh, scales = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
        d = f16_field(blocks, 208)
        dl = (d * scales.view(np.int8).astype(np.float32))[:, :, None]  # (n, 16, 1)
        lo = split_nibbles(ql, 64).reshape(n, 2, 128)  # per half: [nibble k//2, byte-run k%2, l] = 32k + l
        hi = _crumbs(qh).reshape(n, 2, 128)  # per half: [shift k, l] = 32k + l
        q = ((lo | (hi << np.uint8(4))).view(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(np.float32)
        return (dl * q).reshape(n, QK_K)
