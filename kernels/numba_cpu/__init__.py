"""The "cpu" backend: Numba kernels.

Products with quantized weights (`matmul`, `matmul_experts`, `get_rows`) read the GGML blocks
directly (products.py, rows_*.py); elementwise ops and attention come from `NumbaOps` (ops.py).
Weights are used in their GGML storage layout as `upload` returns them: no repacking, no copy.
Activations are rounded as llama.cpp rounds them (`activations="llama.cpp"`, see quant/activations.py)
unless asked for exact float32 products (`activations="f32"`); for Q4_1/Q5_1 weights they carry
block sums (activations.for_weight).
"""

from __future__ import annotations

import numpy as np

from quant import QTensor

from kernels.base import check_activations

from . import products
from .activations import for_weight
from .ops import NumbaOps


class NumbaBackend(NumbaOps):
    name = "cpu"

    def __init__(self, n_threads: int | None = None, activations: str = "llama.cpp"):
        import numba

        max_threads = numba.config.NUMBA_NUM_THREADS
        self.n_threads = max(1, min(int(n_threads or max_threads), max_threads))
        self.activations = check_activations(activations)

    def _x_for(self, x, w: QTensor):
        return for_weight(x, w.qtype, self.activations)

    # --- weights and transfers

    def upload(self, t: QTensor) -> QTensor:
        """Weights stay as they are (zero-copy views of the file); checks the type has kernels."""
        if isinstance(t, QTensor) and len(t.shape) >= 2:
            products.drivers(t.qtype)
        return t

    def asarray(self, x) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    # --- products with quantized weights

    def matmul(self, x, w: QTensor, bias=None, path=None) -> np.ndarray:
        y = products.matmul(self._x_for(x, w), w, self.n_threads, path)
        return y if bias is None else y + bias

    def matmul_experts(self, x, w: QTensor, ids, bias=None, path=None) -> np.ndarray:
        y = products.matmul_experts(self._x_for(x, w), w, ids, self.n_threads, path)
        return y if bias is None else y + np.asarray(bias, np.float32)[np.asarray(ids)]

    def get_rows(self, w: QTensor, ids) -> np.ndarray:
        return products.get_rows(w, ids, self.n_threads)


__all__ = ["NumbaBackend"]
