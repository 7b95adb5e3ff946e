"""Plain float storage types: F32, F16, BF16 (one element per "block")."""

from __future__ import annotations

import numpy as np

from .ggml_types import GGMLType, QuantType


class F32(QuantType, qtype=GGMLType.F32, block_elems=1, block_bytes=4, storage_dtype=np.float32):
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view(np.float32).copy()


class F16(QuantType, qtype=GGMLType.F16, block_elems=1, block_bytes=2, storage_dtype=np.uint16):
    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks).view(np.float16).astype(np.float32)


class BF16(QuantType, qtype=GGMLType.BF16, block_elems=1, block_bytes=2, storage_dtype=np.uint16):
    """bfloat16 is the top half of an IEEE float32: widening is a 16-bit shift."""

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        return (np.ascontiguousarray(blocks).view(np.uint16).astype(np.uint32) << 16).view(np.float32)
