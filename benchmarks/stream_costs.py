"""What one streamed token costs a serving process beside the forward pass, with no model at all.

    python benchmarks/stream_costs.py [--tokens 128] [--rounds 5] [--interval 8]
    python benchmarks/stream_costs.py --work pass [--pass-mb 64]

A lone stream on a small machine runs its forward passes on every core, so whatever else a token costs
(the event loop's wake-up, its Python, the socket write, the client's read) is taken from the passes.
This measures that cost alone: a server whose "model" is a thread handing over one token every
`--interval` ms (a decode step's time), streamed as OpenAI chunks over uvicorn (httptools, uvloop where
installed: what `engine serve` runs), read by benchmarks/bench_server.py's client. Three servers:

* `asgi`: a bare ASGI app -- the thread hands each token to the event loop (`call_soon_threadsafe`
  into an asyncio.Queue), which formats the chunk and sends it: the floor of any ASGI server's stream.
* `fastapi`: the same through FastAPI's StreamingResponse (Starlette's middleware stack around `send`).
* `direct`: the thread formats the chunk and writes the socket itself; the event loop only starts and
  ends the response. Not how a server can work in general (no TLS, no flow control): the cost of the
  write and the formatting without any event-loop wake-up, for comparison.

Per token, medians of the rounds: CPU of the event loop's thread (/proc schedstat), of the producing
thread after its wake-up (formatting and hand-over or write), and of the client process.

`--work pass` replaces the sleep with a stand-in for a decode step that competes for the cores as one
does: ~240 compiled kernel calls, each reading its slice of a `--pass-mb` array on every Numba thread,
with Python between them (the GIL taken and released as between our kernels). Each round then also
times the same passes in the server's process with no stream (what `engine bench`'s tg is to a model),
and reports the stream's speed at the client against it: what any server of that shape loses on this
machine, whatever its model -- the floor under issue 10's lone-stream bar.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import bench_server  # noqa: E402

MODES = ("asgi", "fastapi", "direct")
_PRODUCER_NS = [0, 0]  # CPU ns and tokens of the producing threads since the last report (server side)


def _chunk(text: str) -> bytes:
    obj = {"id": "chatcmpl-" + "0" * 24, "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None, "logprobs": None}]}
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _tail(n: int) -> bytes:
    return b'data: {"choices": [], "usage": {"completion_tokens": %d}}\n\ndata: [DONE]\n\n' % n


class _Pass:
    """A stand-in for a decode step: `calls` compiled kernel calls, each summing its slice of a `mb` MB
    float32 array on every Numba thread (memory-bound, as a decode step's products are), with Python
    between calls -- on the process's one compute thread, handed over from the caller's as a forward
    pass is (kernels/numba_cpu/compute_thread.py: GNU OpenMP's pools, one per calling thread)."""

    def __init__(self, mb: float, calls: int = 240):
        import numba
        import numpy as np

        @numba.njit(parallel=True, nogil=True, fastmath=True)
        def part(a, out):
            n, k = a.shape[0], out.shape[0]
            for t in numba.prange(k):
                s = np.float32(0)
                for i in range(t * n // k, (t + 1) * n // k):
                    s += a[i]
                out[t] = s

        a = np.random.default_rng(0).random(int(mb * (1 << 18)), dtype=np.float32)
        step = len(a) // calls
        self.slices = [a[i * step:(i + 1) * step] for i in range(calls)]
        self.out = np.zeros(numba.config.NUMBA_NUM_THREADS, np.float32)
        self.part = part
        for _ in range(3):  # compiled, and the array touched
            self()

    def __call__(self):
        from kernels.numba_cpu import compute_thread
        compute_thread.run(self._pass)

    def _pass(self):
        for s in self.slices:
            self.part(s, self.out)

    def rate(self, n: int) -> float:
        """Passes a second over n passes in a row, nothing streamed."""
        t0 = time.perf_counter()
        for _ in range(n):
            self()
        return n / (time.perf_counter() - t0)


def _produce(n: int, step, emit):
    """n tokens, each after `step()` (a sleep or a pass): `emit(text)`, its CPU counted."""
    for _ in range(n):
        step()
        c0 = time.thread_time_ns()
        emit("tok")
        _PRODUCER_NS[0] += time.thread_time_ns() - c0
        _PRODUCER_NS[1] += 1


async def _request(receive) -> dict:
    """The request's JSON body ({} for none: GET /v1/models, which bench_server.started polls)."""
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            return json.loads(body or b"{}")


def _serve(mode: str, port: int, interval: float, pass_mb: float = 0.0) -> None:
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):  # hands the app its connection's transport (the `direct` mode)
        def on_headers_complete(self):
            super().on_headers_complete()
            self.scope.setdefault("extensions", {})["transport"] = self.transport

    work = _Pass(pass_mb) if pass_mb else None
    step = work or (lambda: time.sleep(interval))

    def report(body: dict) -> bytes:  # the producers' CPU per token since the last report, and where to read the
        # loop's; with `baseline`, that many passes' rate with nothing streamed
        ns, n = _PRODUCER_NS
        _PRODUCER_NS[:] = [0, 0]
        rate = work.rate(int(body["baseline"])) if work and body.get("baseline") else None
        return json.dumps({"producer_us": ns / max(n, 1) / 1e3, "pid": os.getpid(), "passes_s": rate}).encode()

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        body = await _request(receive)
        n = int(body.get("max_tokens", 0))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if n == 0:
            return await send({"type": "http.response.body", "body": report(body)})
        loop, q = asyncio.get_running_loop(), asyncio.Queue()
        if mode == "direct":
            transport = scope["extensions"]["transport"]
            fd = os.dup(transport.get_extra_info("socket").fileno())  # (the write buffer is empty: nothing queued)
            done = loop.create_future()

            def write(text):
                b = _chunk(text)
                os.write(fd, b"%x\r\n%s\r\n" % (len(b), b))

            def run():
                try:
                    _produce(n, step, write)
                finally:
                    os.close(fd)
                    loop.call_soon_threadsafe(done.set_result, None)
            threading.Thread(target=run, daemon=True).start()
            await done
        else:
            threading.Thread(target=_produce, args=(n, step, lambda t: loop.call_soon_threadsafe(q.put_nowait, t)),
                             daemon=True).start()
            for _ in range(n):
                await send({"type": "http.response.body", "body": _chunk(await q.get()), "more_body": True})
        await send({"type": "http.response.body", "body": _tail(n)})

    app = asgi
    if mode == "fastapi":
        from fastapi import FastAPI, Request
        from fastapi.responses import Response, StreamingResponse
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"data": []}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            n = int(body.get("max_tokens", 0))
            if n == 0:
                return Response(report(body), media_type="application/json")
            loop, q = asyncio.get_running_loop(), asyncio.Queue()
            threading.Thread(target=_produce, args=(n, step, lambda t: loop.call_soon_threadsafe(q.put_nowait, t)),
                             daemon=True).start()

            async def events():
                for _ in range(n):
                    yield _chunk(await q.get())
                yield _tail(n)
            return StreamingResponse(events(), media_type="text/event-stream")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http=Protocol, lifespan="off")


def _thread_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:  # the main thread: uvicorn's event loop
        return int(f.read().split()[0])


def _report(base: str, baseline: int = 0) -> dict:
    """The server's producing threads' CPU per token since the last report, and its pid (a request of 0
    tokens); with `baseline`, the rate of that many passes run with nothing streamed."""
    body = json.dumps({"max_tokens": 0, "baseline": baseline}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def measure(mode: str, tokens: int, rounds: int, interval_ms: float, pass_mb: float = 0.0) -> dict:
    """Medians over `rounds` streams of `tokens`; with `pass_mb`, each stream after as many passes
    with nothing streamed, and `ratio`: the stream's passes a second at the client (first to last
    token, as bench_server's stream t/s) over those."""
    cmd = [sys.executable, __file__, "--serve", mode, "--interval", str(interval_ms), "--pass-mb", str(pass_mb)]
    with bench_server.started(cmd) as base:
        bench_server.chat(base, "m", 0, 4)
        pid = _report(base)["pid"]
        loop, prod, client, ratio = [], [], [], []
        for _ in range(rounds):
            alone = _report(base, tokens if pass_mb else 0)["passes_s"]
            l0, c0 = _thread_cpu_ns(pid), time.process_time()
            first, _, n, last = bench_server.chat(base, "m", 0, tokens)
            if n != tokens:
                raise RuntimeError(f"the {mode} server streamed {n} tokens, not {tokens}")
            loop.append((_thread_cpu_ns(pid) - l0) / n / 1e3)
            client.append((time.process_time() - c0) / n * 1e6)
            prod.append(_report(base)["producer_us"])
            if alone:
                ratio.append((n - 1) / (last - first) / alone)
    return {"mode": mode, "loop_us": statistics.median(loop), "producer_us": statistics.median(prod),
            "client_us": statistics.median(client), "ratio": statistics.median(ratio) if ratio else None,
            "ratios": ratio}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)  # (a server of `measure`'s)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=128, help="tokens a stream (default 128)")
    ap.add_argument("--rounds", type=int, default=5, help="streams per server (default 5; medians)")
    ap.add_argument("--interval", type=float, default=8.0, help="ms between tokens (default 8: a SmolLM2 step)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--work", choices=("sleep", "pass"), default="sleep",
                    help="between tokens: sleep --interval ms (default), or run a stand-in decode pass")
    ap.add_argument("--pass-mb", type=float, default=64.0, help="MB the stand-in pass reads (default 64)")
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port, args.interval / 1e3, args.pass_mb)
        return 0
    pass_mb = args.pass_mb if args.work == "pass" else 0.0
    if pass_mb:
        print("| server | event loop us/token | client us/token | stream / passes alone, median | rounds |\n"
              "|---|---|---|---|---|")
    else:
        print("| server | event loop us/token | producing thread us/token | client us/token |\n|---|---|---|---|")
    for mode in args.modes:
        r = measure(mode, args.tokens, args.rounds, args.interval, pass_mb)
        if pass_mb:
            print(f"| {mode} | {r['loop_us']:.0f} | {r['client_us']:.0f} | {r['ratio']:.3f} | "
                  f"{', '.join(f'{x:.3f}' for x in r['ratios'])} |", flush=True)
        else:
            print(f"| {mode} | {r['loop_us']:.0f} | {r['producer_us']:.0f} | {r['client_us']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
