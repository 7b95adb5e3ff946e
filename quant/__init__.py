"""GGML block types: the single source of truth for layouts and their NumPy dequantizers.

Importing this package registers every supported type (see `QUANT_TYPES`).
"""

from .ggml_types import GGML_BLOCK_SIZES, QK_K, QUANT_TYPES, GGMLType, QuantType, UnsupportedQuantType, dequantize, quant_type, type_name
from .tensor import QTensor
from . import floats, legacy, kquants, nonlinear  # noqa: F401  (registration)

SUPPORTED_TYPES = tuple(QUANT_TYPES)

__all__ = ["GGML_BLOCK_SIZES", "QK_K", "QUANT_TYPES", "SUPPORTED_TYPES", "GGMLType", "QuantType", "QTensor", "UnsupportedQuantType",
           "dequantize", "quant_type", "type_name"]
