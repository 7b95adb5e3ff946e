"""NumPy reference backend: simple, slow, obviously right. Every other backend is tested against it.

Products dequantize the weight with `quant` (the single source of truth for layouts) and multiply in
float32, after rounding the activations as llama.cpp does (`quant.activations`) unless built with
`activations="f32"`; elementwise ops and attention come from `kernels.ops_numpy`. Q4_1/Q5_1 weights
are multiplied in two parts as llama.cpp does: scaled codes by the rounded activations, block offsets
by Q8_1's f16 block sums (`quant.activations.q8_1_block_sums`).
"""

from __future__ import annotations

import numpy as np

from quant import QTensor
from quant.activations import WITH_OFFSETS, q8_1_block_sums, round_like_llama_cpp, round_q8_0, split_offsets

from .base import check_activations

from .ops_numpy import NumpyOps


class NumpyBackend(NumpyOps):
    name = "numpy"
    fuses_products = False  # the oracle keeps every product separate

    def __init__(self, n_threads: int | None = None, activations: str = "llama.cpp"):
        self.n_threads = n_threads or 1
        self.activations = check_activations(activations)

    def _x_for(self, x, w: QTensor) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return round_like_llama_cpp(x, w.qtype) if self.activations == "llama.cpp" else x

    def _product(self, x, w: QTensor, path=None) -> np.ndarray:
        """x (..., n_in) @ W.T (W 2-D) with x as llama.cpp's CPU kernels see it. With a `path` (a batched
        pass, engine/batching.py) one row at a time, so that no row depends on the others (BLAS picks
        different kernels for one row and for many)."""
        if path is not None and x.ndim == 2 and len(x) > 1:
            return np.stack([self._product(r[None], w)[0] for r in x])
        if self.activations == "llama.cpp" and w.qtype in WITH_OFFSETS:
            codes, m = split_offsets(w)
            return round_q8_0(x) @ codes.T + q8_1_block_sums(x) @ m.T
        return self._x_for(x, w) @ w.dequantize().T

    def upload(self, t: QTensor) -> QTensor:
        return t

    def asarray(self, x) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def matmul(self, x: np.ndarray, w: QTensor, bias=None, path=None) -> np.ndarray:
        # x: (n_tok, n_in) or (n_in,) f32; w: (n_out, n_in) -> (n_tok, n_out) or (n_out,); bias (n_out,)
        y = self._product(np.asarray(x, np.float32), w, path)
        return y if bias is None else y + np.asarray(bias, np.float32)

    def matmul_experts(self, x: np.ndarray, w: QTensor, ids: np.ndarray, bias=None, path=None) -> np.ndarray:
        # x: (n_tok, n_in) shared by all chosen experts, or (n_tok, n_used, n_in) one row per expert
        # w: (n_expert, n_out, n_in); ids: (n_tok, n_used) -> (n_tok, n_used, n_out); bias (n_expert, n_out)
        ids = np.asarray(ids)
        n_tok, n_used = ids.shape
        x = np.asarray(x, np.float32)
        if x.ndim == 2:
            x = np.broadcast_to(x[:, None, :], (n_tok, n_used, x.shape[-1]))
        out = np.empty((n_tok, n_used, w.shape[1]), np.float32)
        for e in np.unique(ids):
            we = QTensor.from_buffer(w.qtype, w.shape[1:], w.data[e])
            t, u = np.nonzero(ids == e)
            out[t, u] = self._product(x[t, u], we, path)
        return out if bias is None else out + np.asarray(bias, np.float32)[ids]

    def get_rows(self, w: QTensor, ids) -> np.ndarray:
        return w.dequantize_rows(np.asarray(ids))
