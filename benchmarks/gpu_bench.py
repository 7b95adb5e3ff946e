"""Speed on a GPU: pp and tg tokens/s, kernels per decode step, and the share of the device's memory
bandwidth a decode step reaches, for each model given.

    python benchmarks/gpu_bench.py [--backend cuda] [-p 512] [-n 128] [-r 3] MODEL.gguf [MODEL.gguf ...]

Bandwidth share = (bytes of weights a decode step reads x tokens/s) / the device's bandwidth, the
latter measured here with a device-to-device copy (CuPy; on OpenCL, an enqueue_copy), so the ratio
says how close decode is to its memory-bound floor. Bytes per step: every weight, except that only
the chosen experts of a MoE layer are read (n_used/n_expert of the expert tensors) and one row of the
token embeddings (a tied output head reads all of it as the output layer).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def weight_bytes_per_token(path) -> int:
    from engine.gguf_file import GGUF

    g = GGUF.open(path)
    n_exp = int(g.get(f"{g.arch}.expert_count", 0) or 0)
    n_used = int(g.get(f"{g.arch}.expert_used_count", 0) or 0)
    total = 0
    for name, t in g.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes if "output.weight" not in g.tensors else t.nbytes // t.ne[1]
        elif "_exps." in name and n_exp:
            total += t.nbytes * n_used // n_exp
        else:
            total += t.nbytes
    return total


def measured_bandwidth(backend: str) -> tuple[float, str]:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted), best of 5."""
    if backend in ("cuda", "rocm"):
        import cupy

        n = 1 << 30
        a, b = cupy.empty(n, cupy.uint8), cupy.empty(n, cupy.uint8)
        best = 0.0
        for _ in range(5):
            cupy.cuda.Device().synchronize()
            t0 = time.perf_counter()
            b[...] = a
            cupy.cuda.Device().synchronize()
            best = max(best, 2 * n / (time.perf_counter() - t0))
        return best, "device-to-device copy, CuPy"
    import pyopencl as cl

    from kernels import get_backend

    be = get_backend(backend)
    n = 1 << 28
    a, b = be.rt.alloc(n), be.rt.alloc(n)
    best = 0.0
    for _ in range(5):
        be.rt.sync()
        t0 = time.perf_counter()
        cl.enqueue_copy(be.rt.queue, b, a, byte_count=n)
        be.rt.sync()
        best = max(best, 2 * n / (time.perf_counter() - t0))
    return best, "device-to-device copy, OpenCL"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    bw, how = measured_bandwidth(args.backend)
    print(f"memory bandwidth: {bw / 1e9:.0f} GB/s ({how})", flush=True)
    rows = []
    for path in args.models:
        cmd = [sys.executable, "-m", "engine", "bench", "-m", str(path), "--backend", args.backend, "-p", str(args.p),
               "-n", str(args.n), "-r", str(args.r), "-c", str(max(args.p, args.n) + 16), "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            print(f"{path.name}: bench failed\n{p.stderr[-3000:]}", flush=True)
            rows.append({"model": path.name, "error": p.stderr[-500:]})
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        per_tok = weight_bytes_per_token(path)
        tg = r["tg"]["median"]
        r.update(model=path.name, weight_bytes_per_token=per_tok, bandwidth=bw, bandwidth_share=per_tok * tg / bw)
        rows.append(r)
        d = r.get("device", {})
        print(f"{path.name}: pp{args.p} {r['pp']['median']:.0f} t/s, tg{args.n} {tg:.1f} t/s, "
              f"{d.get('kernels_per_decode_step', '?')} kernels per decode step, "
              f"{per_tok / 1e6:.0f} MB of weights per token -> {100 * r['bandwidth_share']:.1f}% of the bandwidth",
              flush=True)
    print("\n| model | pp t/s | tg t/s | kernels/step | MB/token | bandwidth share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | failed | | | | |")
            continue
        print(f"| {r['model']} | {r['pp']['median']:.0f} | {r['tg']['median']:.1f} | "
              f"{r.get('device', {}).get('kernels_per_decode_step', '?')} | {r['weight_bytes_per_token'] / 1e6:.0f} | "
              f"{100 * r['bandwidth_share']:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
