"""The "cpu" backend: Numba kernels.

Products with quantized weights (`matmul`, `matmul_experts`, `get_rows`) read the GGML blocks
directly (products.py over drivers.py, rows_*.py); elementwise ops and attention come from `NumbaOps` (ops.py).
Weights are used in their GGML storage layout as `upload` returns them: no repacking; views of the file's
memory map, or a copy in 2 MB pages where `Engine.load` asks for one (host_memory.py).
Activations are rounded as llama.cpp rounds them (`activations="llama.cpp"`, see quant/activations.py)
unless asked for exact float32 products (`activations="f32"`); rounded, a matrix-vector product of a
quantized type is an integer dot product of the weights' codes with x's int8 codes (rows_int.py),
as ggml's vec_dot; for Q4_1/Q5_1 weights float x carries block sums (activations.for_weight).
Compiled kernels are cached on disk in a per-user directory set up before any of them is defined
(kernel_cache.py), its index writes locked across processes (cache_lock.py); each type's product
drivers compile on the first product of that type.
"""

from __future__ import annotations

from . import kernel_cache

kernel_cache.configure()  # before the kernel modules below decorate anything

from . import unique_symbols  # noqa: E402,F401  (before any kernel compiles: symbol names unique across processes)

import numpy as np  # noqa: E402

from quant import QTensor  # noqa: E402

from kernels.base import check_activations  # noqa: E402

from . import cache_lock, compute_thread, products, warm  # noqa: E402,F401
from .compute_thread import pinned, run as run_on_compute_thread  # noqa: E402
from .host_memory import HugePageArena  # noqa: E402
from .ops import NumbaOps  # noqa: E402

WEIGHTS = ("mapped", "memory")  # NumbaBackend(weights=...)

cache_lock.install()  # processes compiling into one cache (warm.py's helpers, replicas) cannot mix entries


class NumbaBackend(NumbaOps):
    name = "cpu"
    # Q/K/V and gate/up as one product each (engine/models/common.py Weights.stacked): ~8 us of call
    # overhead saved per product not made, 90 of SmolLM2's 211 a token
    fuses_products = True

    def __init__(self, n_threads: int | None = None, activations: str = "llama.cpp", weights: str = "mapped"):
        """`weights`: "mapped" computes with the file's memory map as it is; "memory" with a copy in
        memory backed by 2 MB pages (host_memory.py: the TLB covers the weights; `Engine.load` picks)."""
        import numba

        max_threads = numba.config.NUMBA_NUM_THREADS
        self.n_threads = max(1, min(int(n_threads or max_threads), max_threads))
        self.activations = check_activations(activations)
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
        self.weights = weights
        self._arena = HugePageArena() if weights == "memory" else None
        self._qtypes: dict = {}  # matrices uploaded per weight type (warm.products_for)
        warm.start()  # with an empty kernel cache: a helper compiles the op kernels meanwhile

    @staticmethod
    def compute_thread(fn, *args, **kwargs):
        """Run a forward pass on the process's one compute thread (compute_thread.py: GNU OpenMP keeps a
        worker pool per calling thread, and a second pool halves every parallel kernel's speed)."""
        return run_on_compute_thread(fn, *args, **kwargs)

    @property
    def batch_invariant(self) -> bool:
        """Products under a fixed path compute each row alone (kernels/base.py); attention computes each
        query row alone too in llama.cpp mode, while in "f32" mode it may split the keys of a short
        batch into chunks (split-K) and so round a row differently by batch size."""
        return self.activations == "llama.cpp"

    # --- weights and transfers

    def upload(self, t: QTensor) -> QTensor:
        """Weights stay as they are (zero-copy views of the file); checks the type has kernels. With
        weights="memory" a matrix is copied into 2 MB pages at its first product (products._prepared):
        only what the products read, not the separate Q/K/V and gate/up of a stacked weight, nor token
        embeddings only looked up."""
        if isinstance(t, QTensor) and len(t.shape) >= 2:
            products.drivers(t.qtype)
            self._qtypes[t.qtype] = self._qtypes.get(t.qtype, 0) + (len(t.shape) == 2)
        return t

    def asarray(self, x) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    # --- products with quantized weights

    @pinned
    def matmul(self, x, w: QTensor, bias=None, path=None) -> np.ndarray:
        y = products.matmul(x, w, self.n_threads, path, self.activations, self._arena)
        return y if bias is None else y + bias

    @pinned
    def matmul_experts(self, x, w: QTensor, ids, bias=None, path=None) -> np.ndarray:
        y = products.matmul_experts(x, w, ids, self.n_threads, path, self.activations, self._arena)
        return y if bias is None else y + np.asarray(bias, np.float32)[np.asarray(ids)]

    def get_rows(self, w: QTensor, ids) -> np.ndarray:
        self._warm(rows=w.qtype)  # a forward pass's first op: the warm-up compiles start here
        return products.get_rows(w, ids, self.n_threads)


__all__ = ["NumbaBackend"]
