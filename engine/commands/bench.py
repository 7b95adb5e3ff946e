"""`bench -m MODEL -p 128 -n 64 -t 2 -r 3 [-d 512] [--json] [--llama-cpp]`: prompt and generation speed, like
llama-bench.

pp: `-p` random prompt tokens evaluated in one batch from an empty context. tg: `-n` tokens evaluated
one at a time from an empty context. `-d N` (llama-bench's `-d`, reported as "tg64 @ d512") starts
each run from a context already holding N random tokens, evaluated as a prompt beforehand and not
timed: the speed a chat has N tokens in -- attention reads every cached position, so decode slows
as the context grows. Each is run once to warm up (JIT compilation), then `-r` times;
the report is the mean and standard deviation of tokens per second. `--llama-cpp` measures llama.cpp
(llama-cpp-python) on the same file with the same threads in the same run and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from engine.generate import decode, prefill

from .common import add_model_args

HELP = "measure prompt (pp) and generation (tg) tokens per second, optionally beside llama.cpp"


def add_arguments(p):
    add_model_args(p)
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (pp test; 0 skips)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (tg test; 0 skips)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-d", "--n-depth", type=int, default=0,
                   help="tokens already in the context when each pp/tg run starts (llama-bench's -d; default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--llama-cpp", action="store_true", help="also measure llama.cpp (needs llama-cpp-python)")


def _stats(samples: list[float], n_tokens: int) -> dict:
    tps = [n_tokens / s for s in samples]
    return {"n_tokens": n_tokens, "mean": statistics.fmean(tps), "std": statistics.stdev(tps) if len(tps) > 1 else 0.0,
            "median": statistics.median(tps), "samples_s": samples}


def _measure(run_pp, run_tg, args) -> dict:
    out = {}
    for key, fn, n in (("pp", run_pp, args.n_prompt), ("tg", run_tg, args.n_gen)):
        if n <= 0:
            continue
        fn(n)  # warm-up: JIT compilation, page-in of the weights
        samples = []
        for _ in range(args.repetitions):
            samples.append(fn(n))
        out[key] = _stats(samples, n)
    return out


def bench_engine(eng, args) -> dict:
    rng = np.random.default_rng(0)
    model = eng.model

    depth = getattr(args, "n_depth", 0)

    def filled(n):
        """A cache for `depth` + n positions holding `depth` random tokens (-d), evaluated as a prompt."""
        cache = model.new_cache(depth + n)
        if depth:
            prefill(model, cache, rng.integers(0, eng.n_vocab, depth).tolist())
        return cache

    def run_pp(n):
        cache = filled(n)
        toks = rng.integers(0, eng.n_vocab, n).tolist()
        t0 = time.perf_counter()
        eng.backend.to_numpy(model.forward(toks, cache))
        return time.perf_counter() - t0

    def run_tg(n):
        cache = filled(n)
        tok = int(rng.integers(0, eng.n_vocab))
        t0 = time.perf_counter()
        for _ in range(n):
            decode(model, cache, tok)  # as generation runs it: replayed (CUDA graph) on a device
        return time.perf_counter() - t0

    out = _measure(run_pp, run_tg, args)
    be = eng.backend
    if getattr(be, "is_device", False):  # kernels in one decode step, counted on a plain forward pass
        cache = model.new_cache(2)
        before = be.launches
        be.to_numpy(model.forward([0], cache))
        out["device"] = {**be.describe(), "kernels_per_decode_step": be.launches - before,
                         "n_gpu_layers": model.place.n_gpu_layers}
    return out


def bench_llama_cpp(path, n_vocab: int, threads: int, args) -> dict:
    import llama_cpp

    depth = getattr(args, "n_depth", 0)
    n_ctx = depth + max(args.n_prompt, args.n_gen) + 8
    batch = max(args.n_prompt, min(depth, 512), 1)  # a pp run in one batch, as ours; the depth in few
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = np.random.default_rng(0)

    def filled():
        llm.reset()
        llm._ctx.kv_cache_clear()
        if depth:
            llm.eval(rng.integers(0, n_vocab, depth).tolist())

    def run_pp(n):
        filled()
        toks = rng.integers(0, n_vocab, n).tolist()
        t0 = time.perf_counter()
        llm.eval(toks)
        return time.perf_counter() - t0

    def run_tg(n):
        filled()
        tok = int(rng.integers(0, n_vocab))
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([tok])
        return time.perf_counter() - t0

    return _measure(run_pp, run_tg, args)


def bench_llama_cpp_isolated(path, n_vocab: int, threads: int, args) -> dict:
    """llama.cpp measured in a fresh process: in ours, the idle Numba worker threads we started would
    compete with llama.cpp's own (measured: tg 27 tokens/s in-process against 130 alone on 2 cores)."""
    import multiprocessing
    import os

    # and without OMP_WAIT_POLICY=PASSIVE should the user have set it for us: ggml's OpenMP threads would
    # then sleep between its many small ops (tg 28 tokens/s instead of 130)
    saved = os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(1)
    finally:
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved
    with pool:
        plain = argparse.Namespace(n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions,
                                   n_depth=getattr(args, "n_depth", 0))
        return pool.apply(bench_llama_cpp, (str(path), n_vocab, threads, plain))


def main(args) -> int:
    import os

    from .common import load_engine

    if args.n_depth < 0:
        raise SystemExit(f"error: -d/--n-depth must be 0 or more, not {args.n_depth}")
    eng = load_engine(args)
    threads = args.threads or os.cpu_count()
    weights = getattr(eng.backend, "weights", None)  # the CPU backend's: "memory" (2 MB pages) or "mapped"
    result = {"model": str(eng.gguf.path), "backend": eng.backend.name, "weights": weights, "threads": threads,
              "n_prompt": args.n_prompt, "n_gen": args.n_gen, "n_depth": args.n_depth, "repetitions": args.repetitions}
    result.update(bench_engine(eng, args))
    if args.llama_cpp:
        ref = bench_llama_cpp_isolated(eng.gguf.path, eng.n_vocab, threads, args)
        result["llama_cpp"] = ref
        result["ratio"] = {k: result[k]["median"] / ref[k]["median"] for k in ("pp", "tg") if k in ref and k in result}
    if args.json:
        print(json.dumps(result))
        return 0
    name = eng.gguf.path.name
    backend = eng.backend.name + {"memory": ", in memory", "mapped": ", mmap"}.get(weights, "")
    print(f"| model | backend | threads | test | t/s | llama.cpp t/s | ratio |")
    print(f"|---|---|---|---|---|---|---|")
    for key, n in (("pp", args.n_prompt), ("tg", args.n_gen)):
        if key not in result:
            continue
        r = result[key]
        ref = result.get("llama_cpp", {}).get(key)
        ref_txt = f"{ref['mean']:.2f} ± {ref['std']:.2f}" if ref else "-"
        ratio = f"{result['ratio'][key]:.2f}" if ref else "-"
        test = f"{key}{n}" + (f" @ d{args.n_depth}" if args.n_depth else "")
        print(f"| {name} | {backend} | {threads} | {test} | {r['mean']:.2f} ± {r['std']:.2f} | {ref_txt} "
              f"| {ratio} |")
    if "device" in result:
        d = result["device"]
        print(f"\ndevice: {d['device']}; {d['kernels_per_decode_step']} kernels per decode step; "
              f"{d['n_gpu_layers']} layers offloaded")
    sys.stdout.flush()
    return 0
