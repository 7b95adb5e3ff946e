"""GGML tensor type ids and the registry of the block types we can decode.

Every GGML type id that llama.cpp knows is named here so that an error can say *which* type a file
uses; only the types with a registered `QuantType` subclass can be decoded. Ids and block sizes follow
ggml's `ggml.h` / gguf-py's `constants.py`.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

QK_K = 256  # elements in a K-quant super-block


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


# (elements per block, bytes per block) for every GGML type, decodable or not: enough to size and skip
# a tensor we cannot decode (`inspect` lists them; loading one for compute raises UnsupportedQuantType).
GGML_BLOCK_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4), GGMLType.F16: (1, 2), GGMLType.BF16: (1, 2), GGMLType.F64: (1, 8),
    GGMLType.I8: (1, 1), GGMLType.I16: (1, 2), GGMLType.I32: (1, 4), GGMLType.I64: (1, 8),
    GGMLType.Q4_0: (32, 2 + 16), GGMLType.Q4_1: (32, 2 + 2 + 16), GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16), GGMLType.Q8_0: (32, 2 + 32), GGMLType.Q8_1: (32, 2 + 2 + 32),
    GGMLType.Q2_K: (QK_K, 84), GGMLType.Q3_K: (QK_K, 110), GGMLType.Q4_K: (QK_K, 144),
    GGMLType.Q5_K: (QK_K, 176), GGMLType.Q6_K: (QK_K, 210), GGMLType.Q8_K: (QK_K, 292),
    GGMLType.IQ2_XXS: (QK_K, 66), GGMLType.IQ2_XS: (QK_K, 74), GGMLType.IQ3_XXS: (QK_K, 98),
    GGMLType.IQ1_S: (QK_K, 50), GGMLType.IQ4_NL: (32, 18), GGMLType.IQ3_S: (QK_K, 110),
    GGMLType.IQ2_S: (QK_K, 82), GGMLType.IQ4_XS: (QK_K, 136), GGMLType.IQ1_M: (QK_K, 56),
    GGMLType.TQ1_0: (QK_K, 54), GGMLType.TQ2_0: (QK_K, 66), GGMLType.MXFP4: (32, 1 + 16),
    GGMLType.NVFP4: (64, 36), GGMLType.Q1_0: (128, 18),
}


def type_name(type_id: int) -> str:
    """`"Q4_K"` for a known id, `"unknown type 99"` otherwise."""
    try:
        return GGMLType(type_id).name
    except ValueError:
        return f"unknown type {type_id}"


class UnsupportedQuantType(NotImplementedError):
    """A GGML type this engine cannot decode (named in the message)."""

    def __init__(self, type_id: int):
        self.type_id = int(type_id)
        supported = ", ".join(t.name for t in QUANT_TYPES)
        super().__init__(f"GGML type {type_name(type_id)} (id {int(type_id)}) is not supported; supported: {supported}")


class QuantType:
    """One GGML block type: its size and a vectorised NumPy dequantizer.

    Subclasses register themselves: `class Q4_0(QuantType, qtype=GGMLType.Q4_0, block_elems=32,
    block_bytes=2 + 16)`. `dequantize_blocks` takes `(n_blocks, block_bytes)` uint8 and returns
    `(n_blocks, block_elems)` float32, bit-exact with ggml's `dequantize_row_*`.
    """

    qtype: GGMLType
    block_elems: int
    block_bytes: int
    # dtype of the storage view kernels receive (see `QTensor`): raw bytes for block types,
    # float32 / uint16 for the plain float types so kernels can index elements directly.
    storage_dtype: np.dtype = np.dtype(np.uint8)

    def __init_subclass__(cls, *, qtype: GGMLType, block_elems: int, block_bytes: int, storage_dtype=np.uint8, **kw):
        super().__init_subclass__(**kw)
        cls.qtype, cls.block_elems, cls.block_bytes = qtype, block_elems, block_bytes
        cls.storage_dtype = np.dtype(storage_dtype)
        if (block_elems, block_bytes) != GGML_BLOCK_SIZES[qtype]:
            raise TypeError(f"{qtype.name}: block size {block_elems}/{block_bytes} disagrees with ggml")
        if qtype in QUANT_TYPES:
            raise TypeError(f"{qtype.name} registered twice")
        QUANT_TYPES[qtype] = cls

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def row_bytes(cls, n_elems: int) -> int:
        if n_elems % cls.block_elems:
            raise ValueError(f"{cls.qtype.name} rows must be a multiple of {cls.block_elems} elements, got {n_elems}")
        return n_elems // cls.block_elems * cls.block_bytes


QUANT_TYPES: dict[GGMLType, type[QuantType]] = {}


def quant_type(type_id: int) -> type[QuantType]:
    """The registered `QuantType` for a GGML type id, or `UnsupportedQuantType` naming it."""
    try:
        return QUANT_TYPES[GGMLType(type_id)]
    except (ValueError, KeyError):
        raise UnsupportedQuantType(type_id) from None


def dequantize(data: np.ndarray, type_id: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Decode raw GGML storage (any dtype, C-contiguous) to float32.

    `shape` is the logical shape (last axis contiguous); without it the result is 1-D.
    """
    qt = quant_type(type_id)
    raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if raw.size % qt.block_bytes:
        raise ValueError(f"{qt.qtype.name}: {raw.size} bytes is not a whole number of {qt.block_bytes}-byte blocks")
    out = qt.dequantize_blocks(raw.reshape(-1, qt.block_bytes)).reshape(-1)
    return out if shape is None else out.reshape(shape)
