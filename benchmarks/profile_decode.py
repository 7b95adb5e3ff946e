"""Where one decode step's time goes: each backend operation's share, and the floor it is measured against.

    python benchmarks/profile_decode.py [-m MODEL] [-t THREADS] [-n STEPS] [--context N]

Wraps every method of the engine's backend in a timer, decodes STEPS tokens after a context of N
tokens, and prints milliseconds per token by operation (calls per token beside them). What the
operations do not account for is Python: the model's own code between kernel calls. The floor line
is the memory-bound limit: the weight bytes one token reads / this machine's bandwidth.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

BACKEND_OPS = ("matmul", "matmul_experts", "get_rows", "rms_norm", "rope", "rope_kv_store", "kv_store", "softmax", "silu",
               "gelu", "swiglu", "geglu", "attention",
               "asarray", "to_numpy")


def instrument(backend) -> dict:
    """Replace the backend's methods on the instance by timed wrappers; returns {op: [seconds, calls]}."""
    stats = collections.defaultdict(lambda: [0.0, 0])
    for name in BACKEND_OPS:
        fn = getattr(backend, name, None)
        if fn is None:
            continue

        def timed(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                s = stats[_name]
                s[0] += time.perf_counter() - t0
                s[1] += 1

        setattr(backend, name, timed)
    return stats


def bandwidth_gbs(n_threads: int) -> float:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_products import measure_bandwidth

    from kernels.numba_cpu import compute_thread

    return max(compute_thread.run(measure_bandwidth, n_threads, repeat=3).values())  # on the forward passes' thread


def main(argv=None) -> int:
    import fetch_test_models

    from engine.engine import Engine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=str(fetch_test_models.DEFAULT_DIR / fetch_test_models.SMOLLM2))
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", "--steps", type=int, default=64)
    ap.add_argument("--context", type=int, default=32)
    args = ap.parse_args(argv)

    eng = Engine.load(args.model, n_ctx=args.context + args.steps + 8, n_threads=args.threads)
    model, be = eng.model, eng.backend
    cache = model.new_cache(args.context + args.steps + 8)
    rng = np.random.default_rng(0)
    be.to_numpy(model.forward(rng.integers(0, eng.n_vocab, args.context).tolist(), cache))
    for _ in range(4):  # warm-up: JIT, page-in
        be.to_numpy(model.forward([1], cache))
    stats = instrument(be)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        be.to_numpy(model.forward([int(rng.integers(0, eng.n_vocab))], cache))
    total = (time.perf_counter() - t0) / args.steps

    weight_bytes = sum(t.nbytes for name, t in eng.gguf.tensors.items() if len(t.ne) >= 2 and name != "token_embd.weight")
    tied = "output.weight" not in eng.gguf.tensors
    if tied:
        weight_bytes += eng.gguf.tensors["token_embd.weight"].nbytes
    gbs = bandwidth_gbs(args.threads)
    print(f"{Path(args.model).name}: {1 / total:.1f} tokens/s, {total * 1e3:.2f} ms per token ({args.threads} threads)")
    print(f"floor: {weight_bytes / 1e6:.1f} MB of weights per token / {gbs:.1f} GB/s = "
          f"{weight_bytes / gbs / 1e6:.2f} ms per token ({gbs * 1e9 / weight_bytes:.0f} tokens/s)\n")
    print("| operation | ms/token | share | calls/token |")
    print("|---|---|---|---|")
    accounted = 0.0
    for name, (secs, calls) in sorted(stats.items(), key=lambda kv: -kv[1][0]):
        per = secs / args.steps
        accounted += per
        print(f"| {name} | {per * 1e3:.2f} | {per / total:.0%} | {calls / args.steps:.0f} |")
    rest = total - accounted
    print(f"| Python between kernels | {rest * 1e3:.2f} | {rest / total:.0%} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
