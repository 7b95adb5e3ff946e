"""Server throughput under concurrent clients: ours (`python -m engine serve`, continuous batching) with
16 slots and with 1, beside llama-cpp-python's server (`python -m llama_cpp.server`) on the same model, in
the same run.

    python benchmarks/bench_server.py [-m MODEL ...] [--clients 1 4 16] [--requests 64] [--max-tokens 32] [-t 2]

Ours runs twice batched: in the default `--batching exact` (a request's tokens do not depend on the
others in its steps) and in `--batching fast` (each step's products as one matrix product).
Each client sends streamed chat requests back to back (different prompts, temperature 0.8, seeded)
until the run's request count is done, after a warm-up round of one request per client (steady state:
kernels built, the slots' caches holding the chat template's common prefix, for every server alike). Reported per server and client count: requests/s, generated
tokens/s, a stream's own decode speed after its first token (median; beside `engine bench`'s tg, measured
first on the same threads), p50/p95 time to first token and p50/p95 request latency. llama-cpp-python's server serves
one request at a time (started with `--interrupt_requests False`: by default it cuts a running stream
when the next request arrives); ours batches every active sequence into one forward pass per step.
llama-cpp-python's server needs the `bench` extra (sse-starlette, starlette-context, pydantic-settings).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
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


def wait_ready(base: str, proc, timeout: float = 180, log=None):
    """Wait until the server at `base` answers /v1/models. RuntimeError if it exits first, with the last
    lines it wrote to `log` (a file opened for reading and writing), or if it is not up in `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}{_tail(log)}")
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server not ready in {timeout:.0f} s{_tail(log)}")


def _tail(log, n: int = 12) -> str:
    if log is None:
        return ""
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()[-n:]
    return (":\n  " + "\n  ".join(lines)) if lines else ""


@contextlib.contextmanager
def started(cmd: list[str]):
    """A server from `cmd` on a free port, ready; its base URL. Stopped on leaving. One that exits
    before it is ready raises RuntimeError with the end of its stderr (llama-cpp-python's server
    without the `[bench]` extra: a ModuleNotFoundError; --no-reference skips it)."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd + ["--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, proc, log=log)
            yield base
        finally:
            proc.terminate()
            proc.wait(20)


def request_body(model: str, i: int, max_tokens: int, ignore_eos: bool = False, stream: bool = True) -> dict:
    """The benchmark's chat request number `i` (its prompt and seed); streamed with the usage chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": f"Write a sentence about the number {i}."}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": stream,
            **({"ignore_eos": True} if ignore_eos else {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def chat(base: str, model: str, i: int, max_tokens: int, usage: dict | None = None,
         ignore_eos: bool = False) -> tuple[float, float, int, float]:
    """One streamed chat: (time to first token, latency, completion tokens, time of the last token).
    `usage`, if given, gets the server's usage object (ours sends one; llama-cpp-python's does not).
    `ignore_eos`: llama-server's field (ours takes it too), a reply of exactly `max_tokens` tokens.

    The client runs on the machine it measures: while the stream runs it only receives, noting when
    each block of bytes arrived; the HTTP chunks and the events' JSON are parsed after the last byte
    (`sse_events`), each event timed by the block that completed it. (urllib's chunked reading and a
    `json.loads` per token took ~0.1 ms of CPU a token from the server's 2 vCPUs: a lone stream on
    SmolLM2 read 1.5-2% slower so, 8 rounds alternating the two clients on one server.)"""
    body = request_body(model, i, max_tokens, ignore_eos)
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    blocks, arrivals, size = [], [], 0
    with socket.create_connection((host, int(port)), timeout=600) as s:
        t0 = time.perf_counter()
        s.sendall(head + data)
        while True:
            b = s.recv(1 << 16)
            if not b:
                break
            size += len(b)
            blocks.append(b)
            arrivals.append((size, time.perf_counter() - t0))
    lat = time.perf_counter() - t0
    ttft, last, n, chunks = None, None, 0, 0
    for t, ev in sse_events(b"".join(blocks), arrivals):
        if any((c.get("delta") or {}).get("content") for c in ev.get("choices", [])):
            chunks += 1  # llama-cpp-python sends no usage in a stream: one content chunk per token
            last = t
            ttft = t if ttft is None else ttft
        if ev.get("usage"):
            n = int(ev["usage"]["completion_tokens"])
            if usage is not None:
                usage.update(ev["usage"])
    return ttft if ttft is not None else lat, lat, n or chunks, last if last is not None else lat


def sse_events(raw: bytes, arrivals: list[tuple[int, float]]) -> list[tuple[float, dict]]:
    """The JSON events of a streamed HTTP/1.1 response `raw` (head, then a chunked or plain body of
    server-sent events), each with the time its last byte arrived: `arrivals` holds (bytes received
    so far, time) per block. Events end with a blank line (LF or CRLF); `[DONE]` and comments are
    skipped. Raises ValueError on a response that is not 200."""
    end = raw.find(b"\r\n\r\n")
    status = raw[:raw.find(b"\r\n")].split()
    if end < 0 or len(status) < 2 or status[1] != b"200":
        raise ValueError(f"not a 200 response: {raw[:200]!r}")
    headers = raw[:end].lower()
    pos = end + 4
    body, where = bytearray(), []  # where: (offset in body, offset in raw) at the start of each piece
    if b"transfer-encoding: chunked" in headers:
        while pos < len(raw):
            eol = raw.index(b"\r\n", pos)
            n = int(raw[pos:eol].split(b";")[0], 16)
            if n == 0:
                break
            where.append((len(body), eol + 2))
            body += raw[eol + 2:eol + 2 + n]
            pos = eol + 2 + n + 2
    else:
        where.append((0, pos))
        body += raw[pos:]
    sizes = [a for a, _ in arrivals]
    starts = [b for b, _ in where]
    events = []
    for m in re.finditer(rb"(.*?)(\r?\n\r?\n)", bytes(body), re.S):
        lines = [ln[5:].strip() for ln in m.group(1).splitlines() if ln.startswith(b"data:")]
        payload = b"\n".join(lines)
        if not payload or payload == b"[DONE]":
            continue
        at = m.end() - 1  # the event's last byte, in the body, then in the raw response
        k = bisect.bisect_right(starts, at) - 1
        raw_at = where[k][1] + at - where[k][0]
        t = arrivals[min(bisect.bisect_right(sizes, raw_at), len(arrivals) - 1)][1]
        events.append((t, json.loads(payload)))
    return events


def pct(xs, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load(base: str, model: str, clients: int, n_requests: int, max_tokens: int, ignore_eos: bool = False) -> dict:
    lock, next_i, ttfts, lat, toks, rates = threading.Lock(), [0], [], [], [], []

    def worker():
        while True:
            with lock:
                if next_i[0] >= n_requests:
                    return
                i = next_i[0]
                next_i[0] += 1
            first, dt, n, last = chat(base, model, i, max_tokens, ignore_eos=ignore_eos)
            with lock:
                ttfts.append(first)
                lat.append(dt)
                toks.append(n)
                if n > 1 and last > first:
                    rates.append((n - 1) / (last - first))  # the stream's own decode speed, first to last token

    # warm-up: one round of `clients` concurrent requests (other prompts), so that every server is measured
    # in its steady state -- kernels built, every slot's cache holding the chat template's common prefix --
    # rather than on its first requests
    warm = [threading.Thread(target=chat, args=(base, model, 10_000 + c, 4)) for c in range(clients)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests_s": n_requests / wall, "tokens_s": sum(toks) / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": pct(ttfts, 0.95), "p50_s": statistics.median(lat), "p95_s": pct(lat, 0.95),
            "stream_tps": statistics.median(rates) if rates else 0.0}


def bench_tg(model: str, threads: int) -> float:
    """`python -m engine bench`'s tg (tokens/s of generation, median) on the same threads, for the run's
    header (the lone pairs take theirs from benchmarks/bench_probe.py)."""
    p = subprocess.run([sys.executable, "-m", "engine", "bench", "-m", model, "-p", "16", "-n", "32", "-r", "3",
                        "-t", str(threads), "--json"], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return float("nan")
    return float(json.loads(p.stdout.strip().splitlines()[-1])["tg"]["median"])


def main(argv=None) -> int:
    import fetch_test_models

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", nargs="+",
                    default=[str(fetch_test_models.DEFAULT_DIR / fetch_test_models.SMOLLM2)])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=16, help="our batched server's slots")
    ap.add_argument("--no-reference", action="store_true", help="skip llama-cpp-python's server")
    ap.add_argument("--no-single", action="store_true", help="skip our single-slot server")
    ap.add_argument("--no-fast", action="store_true", help="skip our batched server in --batching fast")
    ap.add_argument("--lone-pairs", type=int, default=0, metavar="N",
                    help="then N alternations of `engine bench` tg and a lone stream on our batched server "
                         "(the ratio, paired in time on a noisy machine)")
    ap.add_argument("--lone-tokens", type=int, default=128, metavar="N",
                    help="the lone stream's replies, exactly N tokens each, against tgN (default 128, bench's -n)")
    args = ap.parse_args(argv)

    n_ctx = 512 * args.parallel  # 512 positions a slot, as many as llama-cpp-python's one sequence gets
    for model in args.model:
        servers = {
            f"ours (--parallel {args.parallel})": [
                sys.executable, "-m", "engine", "serve", "-m", model, "--alias", "m", "-c", str(n_ctx),
                "-t", str(args.threads), "--parallel", str(args.parallel)],
            f"ours (--parallel {args.parallel} --batching fast)": [
                sys.executable, "-m", "engine", "serve", "-m", model, "--alias", "m", "-c", str(n_ctx),
                "-t", str(args.threads), "--parallel", str(args.parallel), "--batching", "fast"],
            "ours (--parallel 1)": [sys.executable, "-m", "engine", "serve", "-m", model, "--alias", "m", "-c", "512",
                                    "-t", str(args.threads), "--parallel", "1"],
            "llama-cpp-python server": [
                sys.executable, "-m", "llama_cpp.server", "--model", model, "--model_alias", "m", "--n_ctx", "512",
                "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                "--interrupt_requests", "False"],  # its default cuts a running stream when the next request arrives
        }
        if args.no_fast:
            servers.pop(f"ours (--parallel {args.parallel} --batching fast)")
        if args.no_single:
            servers.pop("ours (--parallel 1)")
        if args.no_reference:
            servers.pop("llama-cpp-python server")
        print(f"\n{Path(model).name}, {args.requests} streamed requests of up to {args.max_tokens} tokens, "
              f"{args.threads} threads; `engine bench` tg {bench_tg(model, args.threads):.1f} t/s\n")
        print("| server | clients | requests/s | tokens/s | stream t/s p50 | TTFT p50 s | TTFT p95 s | latency p50 s "
              "| latency p95 s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, cmd in servers.items():
            with started(cmd) as base:
                for c in args.clients:
                    r = load(base, "m", c, args.requests, args.max_tokens)
                    print(f"| {name} | {c} | {r['requests_s']:.2f} | {r['tokens_s']:.1f} | {r['stream_tps']:.1f} | "
                          f"{r['ttft_p50']:.2f} | "
                          f"{r['ttft_p95']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} |", flush=True)
        if args.lone_pairs:
            lone_pairs(model, servers[f"ours (--parallel {args.parallel})"], args)
    return 0


def lone_pairs(model: str, cmd: list[str], args) -> None:
    """A lone stream's decode speed against `engine bench`'s tg, measured alternately on a noisy VM:
    each round takes tg (bench's own `bench_engine`, in benchmarks/bench_probe.py: one process that
    loaded the model once, so the two numbers of a round are seconds apart rather than a new process's
    load apart), then 4 streamed requests from one client to the idle-between-rounds server.

    Like for like: every reply is exactly `--lone-tokens` tokens (`ignore_eos`), as many as tg
    generates (128, bench's default -n): a short reply's speed is mostly the model's first steps after
    a prompt, slower than the steps after them in `bench` and in llama.cpp alike (benchmarks/README.md).
    Two tg's: from an empty context (bench's default, the issue's yardstick), and at the stream's own
    depth (`bench -d`: its chat prompt's tokens evaluated just before, as the server evaluates them
    before the reply) -- what the server and the sampling cost, apart from what the longer context and
    the prompt before it cost the model itself."""
    n = args.lone_tokens
    ratios, ratios_d = [], []
    probe_cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_probe.py"), "-m", model, "-n", str(n), "-r", "3",
                 "-t", str(args.threads)]
    with started(cmd) as base, subprocess.Popen(probe_cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 text=True) as probe:
        def tg(depth: int) -> float:
            probe.stdin.write(f"{depth}\n")
            probe.stdin.flush()
            line = probe.stdout.readline()
            if not line:
                raise RuntimeError(f"bench_probe exited ({probe.poll()})")
            return float(json.loads(line)["tg"])

        try:
            if probe.stdout.readline().strip() != "ready":
                raise RuntimeError(f"bench_probe did not start ({probe.poll()})")
            usage: dict = {}
            chat(base, "m", 0, 4, usage)
            depth = int(usage.get("prompt_tokens", 0))
            tg(0)
            print(f"\nreplies of {n} tokens; | round | `engine bench` tg{n} | tg{n} @ d{depth} | lone stream t/s p50 "
                  f"| ratio to tg | ratio to tg @ d{depth} |\n|---|---|---|---|---|---|")
            for i in range(args.lone_pairs):
                t0, td = tg(0), tg(depth)
                stream = load(base, "m", 1, 4, n, ignore_eos=True)["stream_tps"]
                ratios.append(stream / t0)
                ratios_d.append(stream / td)
                print(f"| {i + 1} | {t0:.1f} | {td:.1f} | {stream:.1f} | {stream / t0:.3f} | {stream / td:.3f} |",
                      flush=True)
        finally:
            probe.stdin.close()
            probe.terminate()
    print(f"\nlone stream / tg, median of {len(ratios)} rounds: {statistics.median(ratios):.3f}; "
          f"/ tg @ d{depth} (the stream's prompt): {statistics.median(ratios_d):.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
