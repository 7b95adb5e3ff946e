"""`QTensor`: a tensor kept in its GGML storage layout (usually a zero-copy view of a memory map)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ggml_types import GGMLType, quant_type


@dataclass(frozen=True, eq=False)
class QTensor:
    """A weight in GGML layout.

    shape: logical shape in NumPy order, last axis contiguous (GGUF's `ne` reversed), e.g. a linear
           layer is `(n_out, n_in)` and a MoE expert stack `(n_expert, n_out, n_in)`.
    data:  storage view `(*shape[:-1], row_bytes)` uint8 for block types; for F32 a float32 array and
           for F16/BF16 a uint16 array of exactly `shape` (so kernels can index elements directly).
    """

    qtype: GGMLType
    shape: tuple[int, ...]
    data: np.ndarray
    name: str = ""

    @classmethod
    def from_buffer(cls, qtype: int, shape: tuple[int, ...], buf: np.ndarray, name: str = "") -> "QTensor":
        """Wrap raw bytes (no copy) as a QTensor of logical `shape`."""
        qt = quant_type(qtype)
        shape = tuple(int(s) for s in shape)
        raw = buf.reshape(-1).view(np.uint8)
        if qt.storage_dtype == np.uint8:
            data = raw.reshape(*shape[:-1], qt.row_bytes(shape[-1]))
        else:
            data = raw.view(qt.storage_dtype).reshape(shape)
        return cls(GGMLType(qtype), shape, data, name)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def row_bytes(self) -> int:
        return quant_type(self.qtype).row_bytes(self.shape[-1])

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 (tests and small tensors only: this copies)."""
        from .ggml_types import dequantize

        return dequantize(self.data, self.qtype, self.shape)

    def dequantize_rows(self, rows) -> np.ndarray:
        """Selected rows of a 2-D tensor as float32 `(len(rows), n_in)` (embedding lookups)."""
        from .ggml_types import dequantize

        sel = self.data[np.asarray(rows)]
        return dequantize(sel, self.qtype, (*sel.shape[:-1], self.shape[-1]))
