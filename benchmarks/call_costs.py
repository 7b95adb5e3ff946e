"""What a call into compiled code costs between two products of a decode step.

    NUMBA_NUM_THREADS=2 python benchmarks/call_costs.py [--mb 1 4]

A decode token makes ~270 calls into Numba kernels (~150 of them parallel regions) with Python and
NumPy between them, and each runs after a product has streamed a weight's megabytes through the caches.
This times, with the caches that cold (`--mb` of memory read just before each call, as a product
reads; medians of 200) and warm (in a loop): a call of a nogil kernel with 10 array arguments (the
dispatch and the unboxing of each array), an empty parallel region on the pool's threads (its start and
barrier), and five NumPy calls of the kind an op wrapper makes (contiguity, reshapes, an output array).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit, prange


@njit(nogil=True)
def _ten_args(a, b, c, d, e, f, g, h, i, j):
    a[0] = b[0]


@njit(nogil=True, parallel=True)
def _region(a, b):
    for t in prange(a.shape[0]):
        a[t] = b[t]


def _numpy_glue(x):
    y = np.ascontiguousarray(x, np.float32)
    shape = y.shape
    flat = y.reshape(-1)
    out = np.empty(flat.shape, np.float32)
    return out.reshape(shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[1, 4], help="megabytes read before each timed call")
    ap.add_argument("-n", type=int, default=200, help="timed calls per case (medians)")
    args = ap.parse_args(argv)

    arrs = [np.zeros(64, np.float32) for _ in range(10)]
    cases = {"10-argument kernel call": lambda: _ten_args(*arrs),
             "parallel region": lambda: _region(arrs[0], arrs[1]),
             "5 NumPy calls": lambda: _numpy_glue(arrs[2])}
    for fn in cases.values():
        fn()  # compile
    print("| case | warm us | " + " | ".join(f"after {mb} MB us" for mb in args.mb) + " |")
    print("|---|---|" + "---|" * len(args.mb))
    for name, fn in cases.items():
        t0 = time.perf_counter()
        for _ in range(20000):
            fn()
        warm = (time.perf_counter() - t0) / 20000 * 1e6
        cold = []
        for mb in args.mb:
            stream = np.ones(mb * 2**20 // 4, np.float32)
            times = []
            for _ in range(args.n):
                stream.sum()  # a product's weights through the caches; the pool's threads spin meanwhile
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            cold.append(statistics.median(times) * 1e6)
        print(f"| {name} | {warm:.2f} | " + " | ".join(f"{c:.2f}" for c in cold) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
