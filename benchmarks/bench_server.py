"""Server throughput under concurrent clients: ours (`python -m engine serve`) beside llama-cpp-python's
server (`python -m llama_cpp.server`) on the same model, in the same run.

    python benchmarks/bench_server.py [-m MODEL] [--clients 4 16] [--requests 16] [--max-tokens 32] [-t 2]

Each client sends chat requests back to back (different prompts, temperature 0.8, seeded) until the
run's request count is done. Reported: requests/s, generated tokens/s, p50/p95 request latency.
llama-cpp-python's server serves one request at a time; ours runs `--parallel` slots.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server not ready")


def chat(base: str, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Write a sentence about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i}
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return time.perf_counter() - t0, int(out["usage"]["completion_tokens"])


def load(base: str, model: str, clients: int, n_requests: int, max_tokens: int) -> dict:
    lock, next_i, lat, toks = threading.Lock(), [0], [], []

    def worker():
        while True:
            with lock:
                if next_i[0] >= n_requests:
                    return
                i = next_i[0]
                next_i[0] += 1
            dt, n = chat(base, model, i, max_tokens)
            with lock:
                lat.append(dt)
                toks.append(n)

    chat(base, model, 10_000, 4)  # warm-up
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests_s": n_requests / wall, "tokens_s": sum(toks) / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def main(argv=None) -> int:
    import fetch_test_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=str(fetch_test_models.DEFAULT_DIR / fetch_test_models.SMOLLM2))
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2, help="our server's slots")
    ap.add_argument("--no-reference", action="store_true", help="skip llama-cpp-python's server")
    args = ap.parse_args(argv)

    servers = {
        f"ours (--parallel {args.parallel})": [sys.executable, "-m", "engine", "serve", "-m", args.model, "--alias", "m",
                                               "-c", "2048", "-t", str(args.threads), "--parallel", str(args.parallel)],
        "llama-cpp-python server": [sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--model_alias", "m",
                                    "--n_ctx", "2048", "--n_threads", str(args.threads), "--n_threads_batch",
                                    str(args.threads)],
    }
    if args.no_reference:
        servers = dict(list(servers.items())[:1])
    print(f"{Path(args.model).name}, {args.requests} requests of up to {args.max_tokens} tokens, {args.threads} threads\n")
    print("| server | clients | requests/s | tokens/s | p50 latency s | p95 latency s |")
    print("|---|---|---|---|---|---|")
    for name, cmd in servers.items():
        port = free_port()
        proc = subprocess.Popen(cmd + ["--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc)
            for c in args.clients:
                r = load(base, "m", c, args.requests, args.max_tokens)
                print(f"| {name} | {c} | {r['requests_s']:.2f} | {r['tokens_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} |",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
