"""Time from `python -m engine run` to its first token, with an empty kernel cache and with a warm one.

Each run is a fresh process answering one token (`-n 1`), so its wall time is start-up, model load,
kernel compilation or cache loading, the prompt and the first token. "cold" points NUMBA_CACHE_DIR
at an empty folder (every kernel compiled, as on a first run on a new machine); "warm" reuses the
folder the last cold run filled. CPU is user + system time of the run and its children (the
warm-up helper, kernels/numba_cpu/warm.py): on a busy machine it says more than the wall time.

    python benchmarks/cold_start.py -m models/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(model: str, threads: int, cache_dir: str, prompt: str,
            extra_env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `run -n 1` in a fresh process."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, **(extra_env or {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "engine", "run", "-m", model, "--backend", "cpu", "-t", str(threads),
                        "-n", "1", "--temp", "0", prompt], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0 or not r.stdout.strip():
        raise SystemExit(f"run failed ({r.returncode}): {r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="cold and warm runs each (medians are printed)")
    ap.add_argument("-p", "--prompt", default="Hello, how are you?")
    ap.add_argument("--no-helper", action="store_true", help="GGUFPY_WARM_HELPER=0: compile in one process")
    args = ap.parse_args(argv)
    extra = {"GGUFPY_WARM_HELPER": "0"} if args.no_helper else {}
    cold, warm = [], []
    with tempfile.TemporaryDirectory(prefix="kernel-cache-") as tmp:
        for i in range(args.repeat):
            d = os.path.join(tmp, "cache")
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            cold.append(one_run(args.model, args.threads, d, args.prompt, extra))
            warm.append(one_run(args.model, args.threads, d, args.prompt, extra))
            print(f"run {i + 1}: cold {cold[-1][0]:.2f} s (cpu {cold[-1][1]:.2f} s), "
                  f"warm {warm[-1][0]:.2f} s (cpu {warm[-1][1]:.2f} s)", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for name, rs in (("cold", cold), ("warm", warm)):
        print(f"{name}: first token {statistics.median(w for w, _ in rs):.2f} s wall, "
              f"{statistics.median(c for _, c in rs):.2f} s cpu (median of {len(rs)}; load average {load:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
