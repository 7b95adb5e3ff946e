"""Decode speed of a gpt-oss-20b-shaped model (24 layers, 32 MXFP4 experts, top-4, random weights),
beside llama.cpp on the same file in the same run.

    python benchmarks/bench_gpt_oss.py [--out models/gpt-oss-20b-shaped.gguf] [-n 16] [-r 3] [-t 2]

The file (~12 GB, written once by tools/make_tiny_gguf.py --shape 20b and reused) has gpt-oss-20b's
real dimensions with a small vocabulary; per token a decode step reads the attention weights and 4 of
32 experts per layer (~1.3 GB of MXFP4), so it is memory-bound.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def main(argv=None) -> int:
    import fetch_test_models
    import make_tiny_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=fetch_test_models.DEFAULT_DIR / "gpt-oss-20b-shaped.gguf")
    ap.add_argument("-p", type=int, default=16)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.out.exists():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        make_tiny_gguf.write_gpt_oss(tmp, shape="20b")
        tmp.rename(args.out)
    print(f"{args.out} ({args.out.stat().st_size / 1e9:.1f} GB)", flush=True)
    cmd = [sys.executable, "-m", "engine", "bench", "-m", str(args.out), "-p", str(args.p), "-n", str(args.n),
           "-r", str(args.r), "-t", str(args.t), "-c", "256", "--llama-cpp"]
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    raise SystemExit(main())
