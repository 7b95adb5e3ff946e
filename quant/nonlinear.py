"""Non-linear 4-bit types: IQ4_NL, IQ4_XS (a 16-entry int8 codebook) and MXFP4 (E2M1 with an E8M0 scale).

A nibble indexes a table of int8 values (`KVALUES_IQ4NL`, `KVALUES_MXFP4`, exported for the kernels);
the element is `d * table[nibble]` in float32, as in ggml's `dequantize_row_iq4_nl/_xs/_mxfp4`.
"""

from __future__ import annotations

import numpy as np

from .ggml_types import QK_K, GGMLType, QuantType
from .legacy import f16_field, split_nibbles

QK4_NL = 32
QK_MXFP4 = 32

# ggml-common.h `kvalues_iq4nl`: a non-uniform grid, denser near zero
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
KVALUES_IQ4NL.flags.writeable = False

# ggml-common.h `kvalues_mxfp4`: E2M1 values {0, .5, 1, 1.5, 2, 3, 4, 6} doubled to integers; bit 3 = sign.
# Because the table is doubled, the E8M0 scale is halved (`e8m0_to_fp32_half`).
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
KVALUES_MXFP4.flags.writeable = False

_IQ4NL_F32 = KVALUES_IQ4NL.astype(np.float32)
_MXFP4_F32 = KVALUES_MXFP4.astype(np.float32)


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """ggml's `ggml_e8m0_to_fp32_half`: the E8M0 exponent byte `e` as float32 `2^(e - 128)`, built from bits.

    e >= 2: exponent field e - 1 (normal);  e == 1: 0x00400000 = 2^-127;  e == 0: 0x00200000 = 2^-128
    (subnormals). 0xFF is not NaN here: it gives 2^127.
    """
    e = np.asarray(e).astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


class IQ4_NL(QuantType, qtype=GGMLType.IQ4_NL, block_elems=QK4_NL, block_bytes=2 + QK4_NL // 2):
    """32 codebook indices and a scale: `y = d * KVALUES_IQ4NL[q]`. Layout: d f16, qs[16] (as Q4_0)."""

    # byte:  0      2                    18
    #        | d    | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> index of y[j+16] | lo nibble -> index of y[j] ]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16_field(blocks, 0)
        idx = split_nibbles(blocks[:, 2:], QK4_NL // 2)[:, 0]
        return d * _IQ4NL_F32[idx]


class IQ4_XS(QuantType, qtype=GGMLType.IQ4_XS, block_elems=QK_K, block_bytes=2 + 2 + QK_K // 64 + QK_K // 2):
    """IQ4_NL indices in 8 sub-blocks of 32 with signed 6-bit scales: `y = (d * (ls - 32)) * KVALUES_IQ4NL[q]`.
    Layout: d f16, scales_h u16, scales_l[4], qs[128]."""

    # byte:  0      2           4             8                  136
    #        | d    | scales_h  | scales_l[4] | qs[128]          |
    # ls_j (6 bits, sub-block j = 0..7):
    #   scales_l[i]:  [ ls_{2i+1} bits 0-3 | ls_{2i} bits 0-3 ]
    #   scales_h (u16 LE): bits 2j..2j+1 = ls_j bits 4-5
    # qs[16j + t] (t = 0..15): [ hi nibble -> e = 32j + 16 + t | lo nibble -> e = 32j + t ]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        d = f16_field(blocks, 0)
        scales_h = blocks[:, 2:4].view(np.uint16)  # (n, 1)
        lo = split_nibbles(blocks[:, 4:8], 1).reshape(n, 8)  # byte i -> [lo, hi] = ls_{2i}, ls_{2i+1}
        hi = ((scales_h >> (2 * np.arange(8, dtype=np.uint16))) & np.uint16(3)).astype(np.uint8)
        ls = (lo | (hi << np.uint8(4))).view(np.int8) - np.int8(32)
        dl = (d * ls.astype(np.float32))[:, :, None]  # (n, 8, 1)
        idx = split_nibbles(blocks[:, 8:], 16)  # (n, 8, 32)
        return (dl * _IQ4NL_F32[idx]).reshape(n, QK_K)


class MXFP4(QuantType, qtype=GGMLType.MXFP4, block_elems=QK_MXFP4, block_bytes=1 + QK_MXFP4 // 2):
    """OCP MX FP4: 32 E2M1 values sharing an E8M0 exponent: `y = KVALUES_MXFP4[q] * 2^(e - 128)`
    (= E2M1 * 2^(e - 127)). Layout: e u8, qs[16] (as Q4_0)."""

    # byte:  0   1                    17
    #        | e | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> y[j+16] | lo nibble -> y[j] ]; nibble = [sign | E2M1 exponent (2) | mantissa (1)]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = e8m0_to_fp32_half(blocks[:, 0:1])
        idx = split_nibbles(blocks[:, 1:], QK_MXFP4 // 2)[:, 0]
        return _MXFP4_F32[idx] * d
