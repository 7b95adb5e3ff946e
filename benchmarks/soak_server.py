"""Soak test: a real `serve` process under N concurrent clients for a long time.

    python benchmarks/soak_server.py --minutes 20 --clients 16 [-m MODEL] [--interval 60] [-- SERVE ARGS]

Each client loops over four kinds of request: a completion echoing a prompt unique to the client and
the request (its reply must start with exactly that prompt: a mixed-up response shows), a streamed
chat (must end with a finish_reason and [DONE]), a deterministic completion (temperature 0, one of
a few fixed prompts, whose text must equal the reference taken before the clients start: a corrupted
or mixed one shows), and /tokenize. Every `--interval` seconds a line: requests served, errors, wrong
responses, p95 latency over the interval, resident memory of the server (its process and children,
the template renderers). At the end, a JSON summary; exit 1 if any request failed or was wrong, or
if memory at the end grew more than `--max-growth` (default 10%) over memory after the first interval.

Without -m it serves the tiny random-weight model (tools/make_tiny_gguf.py), which stresses the
server, not the model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools"), str(ROOT)]

from live_server import LiveServer, tiny_model  # noqa: E402

FIXED_PROMPTS = ["The quick brown fox", "Once upon a time", "1, 2, 3, 4,", "Hello"]


def tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.served = self.errors = self.wrong = 0
        self.latencies: list[float] = []
        self.problems: list[str] = []

    def record(self, seconds: float, problem: str | None = None, error: bool = False):
        with self.lock:
            self.latencies.append(seconds)
            if problem is None:
                self.served += 1
                return
            if error:
                self.errors += 1
            else:
                self.wrong += 1
            if len(self.problems) < 20:
                self.problems.append(problem)

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
            return out


def p95(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def one_request(srv: LiveServer, client: int, n: int, refs: dict) -> str | None:
    """Send request `n` of `client`; None if the answer is right, else what is wrong."""
    kind = n % 4
    if kind == 0:
        prompt = f"client {client} request {n}:"
        status, body, _ = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 8, "echo": True, "seed": n},
                                   timeout=120)
        if status != 200:
            return f"completion: HTTP {status} {body[:200]}"
        text = json.loads(body)["choices"][0]["text"]
        return None if text.startswith(prompt) else f"echo mixed up: sent {prompt!r}, got {text[:60]!r}"
    if kind == 1:
        status, body, _ = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": f"c{client} n{n}"}],
                                                            "max_tokens": 12, "stream": True}, timeout=120)
        if status != 200:
            return f"stream: HTTP {status} {body[:200]}"
        events = [line[6:] for line in body.split("\n") if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return f"stream did not end with [DONE]: {body[-200:]!r}"
        finish = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c.get("finish_reason")]
        return None if finish and finish[-1] in ("stop", "length") else f"stream without finish_reason: {body[-200:]!r}"
    if kind == 2:
        prompt = FIXED_PROMPTS[(client + n) % len(FIXED_PROMPTS)]
        status, body, _ = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 0},
                                   timeout=120)
        if status != 200:
            return f"fixed completion: HTTP {status} {body[:200]}"
        text = json.loads(body)["choices"][0]["text"]
        return None if text == refs[prompt] else f"deterministic reply changed for {prompt!r}: {text!r} != {refs[prompt]!r}"
    status, body, _ = srv.post("/tokenize", {"content": f"client {client} request {n}"}, timeout=120)
    if status != 200 or not json.loads(body).get("tokens"):
        return f"tokenize: HTTP {status} {body[:200]}"
    return None


def soak(srv: LiveServer, seconds: float, clients: int, interval: float, out=sys.stdout) -> dict:
    refs = {}
    for p in FIXED_PROMPTS:  # the references, before any concurrency
        status, body, _ = srv.post("/v1/completions", {"prompt": p, "max_tokens": 10, "temperature": 0}, timeout=300)
        assert status == 200, body
        refs[p] = json.loads(body)["choices"][0]["text"]
    stats = Stats()
    stop = threading.Event()

    def client(i: int):
        n = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                problem = one_request(srv, i, n, refs)
                stats.record(time.monotonic() - t0, problem)
            except Exception as e:  # noqa: BLE001 -- a dropped connection or a timeout is an error to count
                stats.record(time.monotonic() - t0, f"{type(e).__name__}: {e}", error=True)
            n += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    lines, rss_first = [], None
    tick = 0
    while time.monotonic() - start < seconds and srv.proc.poll() is None:
        tick += 1
        time.sleep(max(0.0, start + tick * interval - time.monotonic()))
        rss = tree_rss_kb(srv.proc.pid)
        rss_first = rss_first or rss
        lat = stats.take_latencies()
        line = {"t_s": round(time.monotonic() - start), "served": stats.served, "errors": stats.errors,
                "wrong": stats.wrong, "rps": round(len(lat) / interval, 1), "p95_ms": round(p95(lat) * 1e3, 1),
                "rss_mb": round(rss / 1024, 1)}
        lines.append(line)
        print(f"[{line['t_s']:5d} s] served {line['served']:7d}  errors {line['errors']}  wrong {line['wrong']}  "
              f"{line['rps']:6.1f} req/s  p95 {line['p95_ms']:8.1f} ms  RSS {line['rss_mb']:7.1f} MB", file=out, flush=True)
    stop.set()
    for t in threads:
        t.join(150)
    healthy = srv.proc.poll() is None and srv.get("/health")[0] == 200
    rss_end = tree_rss_kb(srv.proc.pid) if srv.proc.poll() is None else 0
    return {"seconds": round(time.monotonic() - start), "clients": clients, "served": stats.served,
            "errors": stats.errors, "wrong": stats.wrong, "problems": stats.problems, "healthy_after": healthy,
            "rss_mb_after_first_interval": round((rss_first or 0) / 1024, 1), "rss_mb_end": round(rss_end / 1024, 1),
            "rss_growth": round(rss_end / rss_first - 1, 4) if rss_first else None, "intervals": lines}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--seconds", type=float, default=None, help="instead of --minutes")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--interval", type=float, default=60, help="seconds between report lines")
    ap.add_argument("-m", "--model", default=None, help="GGUF to serve (default: the tiny random model)")
    ap.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth after the first interval")
    ap.add_argument("--json", default=None, help="also write the summary here")
    ap.add_argument("serve_args", nargs="*", help="after --: extra `serve` arguments (e.g. -np 4)")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # killed: still stop the server (the finally below)
    with tempfile.TemporaryDirectory() as d:
        model = args.model or str(tiny_model(Path(d) / "tiny.gguf"))
        srv = LiveServer("-m", model, *args.serve_args)
        try:
            print(f"soak: {args.clients} clients for {seconds:g} s against {Path(model).name} "
                  f"(serve {' '.join(args.serve_args)})", flush=True)
            summary = soak(srv, seconds, args.clients, args.interval)
        finally:
            srv.stop()
    summary["model"] = Path(model).name
    text = json.dumps({k: v for k, v in summary.items() if k != "intervals"}, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    ok = (summary["errors"] == 0 and summary["wrong"] == 0 and summary["healthy_after"]
          and summary["rss_growth"] is not None and summary["rss_growth"] <= args.max_growth)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
