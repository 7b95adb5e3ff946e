"""Numba's thread count for the next parallel kernel, set only when it changes.

Every product and every parallel op picks its thread count (one for small work, all for big; see
products.PARALLEL_MIN_WORK, ops.PAR_MIN), ~300 times a decode token. `numba.get_num_threads()` costs
~2 us a call (it takes a multiprocessing lock to make sure the pool is up), so the count last set is
remembered here instead. Numba keeps the count per calling thread, and so does this record; all the
backend's kernels set it through `use`.
"""

from __future__ import annotations

import threading

import numba

_local = threading.local()


def use(n: int) -> int:
    """Run the next parallel kernel of this thread on n threads (1..NUMBA_NUM_THREADS); returns n."""
    if getattr(_local, "n", None) == n:  # the common case (~300 calls a token), before any arithmetic
        return n
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if getattr(_local, "n", None) != n:
        numba.set_num_threads(n)
        _local.n = n
    return n


__all__ = ["use"]
