"""The 32-element "legacy" block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Each dequantizer works on a whole `(n_blocks, block_bytes)` uint8 array at once and computes in float32
with the same operations, in the same order, as ggml's `dequantize_row_*` (ggml-quants.c), so results
are bit-exact (including the sign of zero and where inf/NaN appear).

Nibble order, shared by every 4-bit 32-element block (here, IQ4_NL and MXFP4): byte `qs[j]` holds
element `j` in its low nibble and element `j + 16` in its high nibble (halves, not interleaved).

The small helpers `f16_field` and `split_nibbles` are shared with `kquants` and `nonlinear`.
"""

from __future__ import annotations

import numpy as np

from .ggml_types import GGMLType, QuantType

QK = 32  # elements per legacy block

_NIBBLE_SHIFTS = np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)


def f16_field(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian f16 at byte `offset` of every block, widened to float32, shape `(n_blocks, 1)`."""
    return blocks[:, offset:offset + 2].view(np.float16).astype(np.float32)


def split_nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """Unpack runs of `width` bytes into `2 * width` 4-bit values: the low nibbles of the run first, then
    the high nibbles. `qs` is `(n, k * width)` uint8; the result is `(n, k, 2 * width)` uint8 in 0..15.
    """
    n = qs.shape[0]
    nib = (qs.reshape(n, -1, 1, width) >> _NIBBLE_SHIFTS) & np.uint8(0x0F)  # (n, k, lo/hi, width)
    return nib.reshape(n, -1, 2 * width)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """The 32 bits of a little-endian uint32 stored as 4 bytes, as `(n, 32)` uint8 0/1; column j = bit j."""
    return np.unpackbits(qh, axis=1, bitorder="little")


class Q4_0(QuantType, qtype=GGMLType.Q4_0, block_elems=QK, block_bytes=2 + QK // 2):
    """32 4-bit values around 8: `y = (q - 8) * d`. Layout: d f16, qs[16] (two nibbles a byte)."""

    # byte:  0      2                    18
    #        | d    | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> y[j+16] | lo nibble -> y[j] ]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16_field(blocks, 0)
        q = split_nibbles(blocks[:, 2:], QK // 2)[:, 0].view(np.int8) - np.int8(8)
        return q.astype(np.float32) * d


class Q4_1(QuantType, qtype=GGMLType.Q4_1, block_elems=QK, block_bytes=2 + 2 + QK // 2):
    """32 4-bit values with scale and offset: `y = q * d + m`. Layout: d f16, m f16, qs[16]."""

    # byte:  0      2      4                    20
    #        | d    | m    | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> y[j+16] | lo nibble -> y[j] ]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d, m = f16_field(blocks, 0), f16_field(blocks, 2)
        q = split_nibbles(blocks[:, 4:], QK // 2)[:, 0]
        return q.astype(np.float32) * d + m  # product rounded, then sum: no FMA (as gguf-py, ggml x86-64)


class Q5_0(QuantType, qtype=GGMLType.Q5_0, block_elems=QK, block_bytes=2 + 4 + QK // 2):
    """32 5-bit values around 16: `y = (q - 16) * d`. Layout: d f16, qh[4] (5th bits), qs[16] (low 4 bits)."""

    # byte:  0      2                6                    22
    #        | d    | qh (u32 LE)    | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> low 4 bits of y[j+16] | lo nibble -> low 4 bits of y[j] ]
    # qh:    bit j (0..31) of the little-endian uint32 = bit 4 of y[j]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16_field(blocks, 0)
        lo = split_nibbles(blocks[:, 6:], QK // 2)[:, 0]
        hi = _high_bits32(blocks[:, 2:6])
        q = (lo | (hi << np.uint8(4))).view(np.int8) - np.int8(16)
        return q.astype(np.float32) * d


class Q5_1(QuantType, qtype=GGMLType.Q5_1, block_elems=QK, block_bytes=2 + 2 + 4 + QK // 2):
    """32 5-bit values with scale and offset: `y = q * d + m`. Layout: d f16, m f16, qh[4], qs[16]."""

    # byte:  0      2      4                8                    24
    #        | d    | m    | qh (u32 LE)    | qs[0] ... qs[15]   |
    # qs[j]: [ hi nibble -> low 4 bits of y[j+16] | lo nibble -> low 4 bits of y[j] ]
    # qh:    bit j (0..31) of the little-endian uint32 = bit 4 of y[j]
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d, m = f16_field(blocks, 0), f16_field(blocks, 2)
        lo = split_nibbles(blocks[:, 8:], QK // 2)[:, 0]
        hi = _high_bits32(blocks[:, 4:8])
        q = lo | (hi << np.uint8(4))
        return q.astype(np.float32) * d + m


class Q8_0(QuantType, qtype=GGMLType.Q8_0, block_elems=QK, block_bytes=2 + QK):
    """32 signed bytes and a scale: `y = q * d`. Layout: d f16, qs[32] int8."""

    # byte:  0      2                        34
    #        | d    | qs[0] ... qs[31] (i8)  |
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d = f16_field(blocks, 0)
        return blocks[:, 2:].view(np.int8).astype(np.float32) * d
