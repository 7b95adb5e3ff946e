"""Where a lone stream's time goes between forward passes: `engine bench`'s tg, a streamed reply and a
reply not streamed, timed pass by pass on the compute thread.

    python benchmarks/pass_gaps.py -m MODEL [--rounds 3] [--tokens 128] [-t 2]

A lone stream's speed against `bench`'s tg moves by several percent from one round to the next on a
shared VM; the time of each forward pass and of the gap between two passes moves far less, and says
where the difference is. Every forward pass of the Numba backend runs on one thread
(kernels/numba_cpu/compute_thread.py); this script wraps its `run` in two processes, a tg probe
(`bench_engine`, the function `engine bench` runs, at the depth of the stream's chat prompt) and an
`engine serve --parallel 16`, and per decode pass (one token) records:

* pass: the pass itself, on the compute thread;
* gap: from the end of one pass to the start of the next, split into
  - back: the pass's end to the calling thread's wake-up with its logits,
  - caller: the calling thread's Python, from there until it hands over the next pass (sampling,
    detokenizing, the stream's pieces, the scheduler; `bench` only picks the argmax),
  - wake: the hand-over to the pass's start on the compute thread, which must take the GIL first: here
    the event loop's Python for the token just handed to it runs, when the reply is streamed.

Each round: tg (2 runs of `--tokens`), then 2 streamed replies of exactly `--tokens` tokens (`ignore_eos`),
then 2 replies not streamed; medians of their passes, and of the rounds at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

FIELDS = ("pass_ms", "gap_ms", "back_ms", "caller_ms", "wake_ms")
_PASSES: list[tuple[float, float, float, float]] = []  # (handed over, pass start, pass end, caller woken)


def _instrument() -> None:
    """Time every decode pass handed to the compute thread (the backend's `run`, wrapped)."""
    import kernels.numba_cpu as numba_cpu
    from kernels.numba_cpu import compute_thread

    def run(fn, *args, **kwargs):
        if compute_thread.current():
            return fn(*args, **kwargs)
        times = [0.0, 0.0]

        def timed(*a, **k):
            times[0] = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[1] = time.perf_counter()

        handed = time.perf_counter()
        value = compute_thread.run(timed, *args, **kwargs)
        tokens = args[0] if args else None
        if hasattr(tokens, "__len__") and len(tokens) == 1:
            _PASSES.append((handed, times[0], times[1], time.perf_counter()))
        return value

    numba_cpu.run_on_compute_thread = run


def summary() -> dict:
    """Medians over the decode passes recorded since the last summary (passes in a row only: a gap
    over 5 ms is a new reply's start)."""
    p, _PASSES[:] = list(_PASSES), []
    rows = {k: [] for k in FIELDS}
    for a, b in zip(p, p[1:]):
        if b[0] - a[3] > 0.005:
            continue
        rows["pass_ms"].append(b[2] - b[1])
        rows["gap_ms"].append(b[1] - a[2])
        rows["back_ms"].append(a[3] - a[2])
        rows["caller_ms"].append(b[0] - a[3])
        rows["wake_ms"].append(b[1] - b[0])
    return {k: statistics.median(v) * 1e3 if v else None for k, v in rows.items()} | {"passes": len(p)}


def _serve(argv: list[str]) -> int:
    """`engine serve` with the passes timed; each line on stdin prints one summary line."""
    _instrument()

    def answer():
        for _ in sys.stdin:
            print(json.dumps(summary()), flush=True)
    threading.Thread(target=answer, daemon=True).start()
    from engine.cli import main
    return main(["serve", *argv])


def _probe(model: str, tokens: int, threads: int) -> int:
    """`bench_engine`'s tg with the passes timed; each line on stdin (a depth) prints tg and a summary."""
    _instrument()
    from engine.commands import bench
    from engine.commands.common import load_engine
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["-m", model, "-n", str(tokens), "-r", "2", "-t", str(threads)])
    args.n_prompt = 0
    eng = load_engine(args)
    bench.bench_engine(eng, args)
    print("ready", flush=True)
    for line in sys.stdin:
        args.n_depth = int(line.strip() or 0)
        summary()
        tg = bench.bench_engine(eng, args)["tg"]["median"]
        print(json.dumps(summary() | {"tps": tg}), flush=True)
    return 0


def _json_line(proc) -> dict:
    """The next JSON line a child prints (a server also prints its own lines)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the child exited ({proc.poll()})")
        if line.startswith("{"):
            return json.loads(line)


def _ask(proc, line: str = "") -> dict:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return _json_line(proc)


def _plain(base: str, i: int, tokens: int) -> float:
    """A reply not streamed, exactly `tokens` tokens: the server's own decode speed."""
    import bench_server

    body = bench_server.request_body("m", i, tokens, ignore_eos=True, stream=False)
    req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return float(json.loads(r.read())["timings"]["predicted_per_second"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--role", "serve"]:  # the rest is `engine serve`'s, as given
        return _serve(argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("probe",), help=argparse.SUPPRESS)
    ap.add_argument("-m", "--model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="tokens a reply and a tg run (default 128)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx", type=int, default=8192, help="the server's context, all slots' (default 8192)")
    ap.add_argument("--parallel", type=int, default=16, help="the server's slots (default 16)")
    args = ap.parse_args(argv)
    if args.role == "probe":
        return _probe(args.model, args.tokens, args.threads)
    if not args.model:
        ap.error("-m MODEL is required")
    import bench_server

    me = [sys.executable, __file__]
    port = bench_server.free_port()
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    server = subprocess.Popen(me + ["--role", "serve", "-m", args.model, "--alias", "m", "-c", str(args.ctx), "-t",
                                    str(args.threads), "--parallel", str(args.parallel), "--port", str(port)],
                              stderr=subprocess.DEVNULL, **pipes)
    probe = subprocess.Popen(me + ["--role", "probe", "-m", args.model, "--tokens", str(args.tokens), "-t",
                                   str(args.threads)], **pipes)
    rows: dict[str, list[dict]] = {"`engine bench` tg": [], "streamed": [], "not streamed": []}
    try:
        base = f"http://127.0.0.1:{port}"
        bench_server.wait_ready(base, server)
        with urllib.request.urlopen(base + "/props", timeout=30) as r:
            props = json.loads(r.read())
        if Path(props["model_path"]).resolve() != Path(args.model).resolve():
            raise RuntimeError(f"the server runs {props['model_path']}, not {args.model}")
        if probe.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the tg probe did not start ({probe.poll()})")
        usage: dict = {}
        bench_server.chat(base, "m", 0, 4, usage)
        depth = int(usage.get("prompt_tokens", 0))
        print(f"tg at d{depth} (the stream's prompt), replies of {args.tokens} tokens; ms a token, medians\n\n"
              "| round | what | tokens/s | pass | gap | back | caller | wake |\n|---|---|---|---|---|---|---|---|")
        for r in range(args.rounds):
            got = {"`engine bench` tg": _ask(probe, str(depth))}
            _ask(server)
            rates = []
            for i in range(2):
                first, _, n, last = bench_server.chat(base, "m", i, args.tokens, ignore_eos=True)
                rates.append((n - 1) / (last - first))
            got["streamed"] = _ask(server) | {"tps": statistics.median(rates)}
            got["not streamed"] = {"tps": statistics.median(_plain(base, i, args.tokens) for i in range(2))}
            got["not streamed"] |= _ask(server)
            for what, s in got.items():
                rows[what].append(s)
                print(f"| {r + 1} | {what} | {s['tps']:.1f} | " + " | ".join(
                    f"{s[k]:.3f}" if s[k] is not None else "-" for k in FIELDS) + " |", flush=True)
    finally:
        for p in (probe, server):
            p.stdin.close()
            p.terminate()
            p.wait(timeout=30)
    print("\nmedians of the rounds:\n\n| what | tokens/s | pass | gap | back | caller | wake |\n"
          "|---|---|---|---|---|---|---|")
    for what, ss in rows.items():
        med = lambda k: statistics.median(s[k] for s in ss if s[k] is not None)  # noqa: E731
        print(f"| {what} | {med('tps'):.1f} | " + " | ".join(f"{med(k):.3f}" for k in FIELDS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
