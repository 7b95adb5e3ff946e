"""Speed of the Numba CPU matrix-vector products (decode), per type, against this machine's memory
bandwidth.

    python -m pytest benchmarks/bench_products.py --benchmark-enable    # pytest-benchmark
    python benchmarks/bench_products.py [--threads N] [--types Q4_0,Q8_0]  # markdown table

Decode is memory-bound: each token reads every weight once, so the figure of merit is GB/s of
weight bytes read (the tensor's GGML bytes / median time of one `backend.matmul(x, w)` with a
1-D x). `test_memory_bandwidth` measures what the machine can read in the same run (a large
float32 array summed by NumPy on one thread and by Numba on all threads; the better one counts).
Shapes: SmolLM2-135M's 576x1536 and 1536x576 (K-quants, whose rows need n_in % 256 == 0, use
1536x768 instead) and a 2048x8192 projection. The same weight is reused each round, so these
weights (0.2-67 MB) are read from the caches when they fit; a model's weights, read one after the
other, come from DRAM -- compare with the bandwidth line. Everything is timed on the backend's compute
thread (kernels/numba_cpu/compute_thread.py), as a forward pass calls the products: from another
thread each call would include handing it over (~50 us).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kernels.numba_cpu import compute_thread  # noqa: E402
from quant import GGMLType, quant_type  # noqa: E402
from qdata import random_qtensor  # noqa: E402

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4"]
BANDWIDTH_BYTES = 1 << 30   # 1 GiB: well beyond the caches of a desktop or laptop


def shapes_for(type_name: str) -> list[tuple[int, int]]:
    k = quant_type(GGMLType[type_name]).block_elems == 256
    return [(576, 1536), (1536, 768) if k else (1536, 576), (2048, 8192)]


CASES = [(t, s) for t in TYPES for s in shapes_for(t)]


def make_case(type_name: str, shape: tuple[int, int]):
    rng = np.random.default_rng(0)
    w = random_qtensor(GGMLType[type_name], shape, rng)
    x = rng.standard_normal(shape[1]).astype(np.float32)
    return w, x


def backend(n_threads: int | None = None):
    from kernels.numba_cpu import NumbaBackend

    return NumbaBackend(n_threads=n_threads)


# --- memory bandwidth


def _numba_sum():
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=True)
    def parallel_sum(a):
        n_chunks = 256
        step = (a.shape[0] + n_chunks - 1) // n_chunks
        partial = np.zeros(n_chunks, np.float32)
        for c in prange(n_chunks):
            s = np.float32(0.0)
            for i in range(c * step, min((c + 1) * step, a.shape[0])):
                s += a[i]
            partial[c] = s
        return partial.sum()

    return parallel_sum


def measure_bandwidth(n_threads: int | None = None, repeat: int = 5) -> dict[str, float]:
    """GB/s reading a 1 GiB float32 array: NumPy sum (1 thread) and a Numba prange sum."""
    import numba

    a = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    psum = _numba_sum()
    if n_threads:
        numba.set_num_threads(n_threads)
    psum(a)
    out = {}
    numba_name = f"numba sum, {numba.get_num_threads()} threads"
    for name, fn in (("numpy sum, 1 thread", a.sum), (numba_name, lambda: psum(a))):
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = a.nbytes / statistics.median(ts) / 1e9
    return out


# --- pytest-benchmark

try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def cpu():
        return backend()

    def test_memory_bandwidth(benchmark):
        a = np.ones(BANDWIDTH_BYTES // 4, np.float32)
        benchmark.pedantic(a.sum, rounds=5, iterations=1, warmup_rounds=1)
        benchmark.extra_info["bytes"] = a.nbytes
        if benchmark.stats is not None:
            benchmark.extra_info["GB/s"] = round(a.nbytes / benchmark.stats.stats.median / 1e9, 2)
        benchmark.extra_info["all"] = {k: round(v, 2) for k, v in compute_thread.run(measure_bandwidth, repeat=3).items()}

    @pytest.mark.parametrize("type_name,shape", CASES, ids=[f"{t}-{s[0]}x{s[1]}" for t, s in CASES])
    def test_matvec(benchmark, cpu, type_name, shape):
        w, x = make_case(type_name, shape)
        w = cpu.upload(w)
        cpu.matmul(x, w)  # compile / load the cache outside the timing
        compute_thread.run(benchmark, cpu.matmul, x, w)
        benchmark.extra_info.update(type=type_name, shape=list(shape), bytes=w.nbytes)
        if benchmark.stats is not None:
            med = benchmark.stats.stats.median
            benchmark.extra_info["GB/s"] = round(w.nbytes / med / 1e9, 2)
            benchmark.extra_info["us"] = round(med * 1e6, 1)


# --- script mode: a markdown table


def time_matvec(be, w, x, min_time: float = 0.2, min_runs: int = 20) -> float:
    return compute_thread.run(_time_matvec, be, w, x, min_time, min_runs)


def _time_matvec(be, w, x, min_time: float, min_runs: int) -> float:
    be.matmul(x, w)
    ts: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(ts) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        be.matmul(x, w)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="threads (default: all numba threads)")
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated GGML types")
    args = ap.parse_args(argv)
    be = backend(args.threads)
    bw = compute_thread.run(measure_bandwidth, be.n_threads)
    best = max(bw.values())
    print("memory bandwidth (1 GiB read): " + ", ".join(f"{k}: {v:.1f} GB/s" for k, v in bw.items()))
    print(f"threads: {be.n_threads}\n")
    print("| type | shape (n_out x n_in) | MB | GB/s | us | fraction of bandwidth |")
    print("|---|---|---|---|---|---|")
    for t in args.types.split(","):
        for shape in shapes_for(t):
            w, x = make_case(t, shape)
            med = time_matvec(be, be.upload(w), x)
            gbs = w.nbytes / med / 1e9
            print(f"| {t} | {shape[0]}x{shape[1]} | {w.nbytes / 1e6:.2f} | {gbs:.1f} | {med * 1e6:.0f} "
                  f"| {gbs / best:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
