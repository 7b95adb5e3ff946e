"""Prompt (pp) and generation (tg) speed of the real test models, beside llama.cpp in the same run.

    python benchmarks/bench_models.py [-p 128] [-n 64] [-t 2] [-r 3]

Runs `python -m engine bench --llama-cpp --json` for SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (fetched
by tools/fetch_test_models.py) and prints a markdown table with medians and the ratio ours / llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import fetch_test_models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    args = ap.parse_args(argv)
    print("| model | test | ours t/s (median) | llama.cpp t/s (median) | ratio |")
    print("|---|---|---|---|---|")
    for name in (fetch_test_models.SMOLLM2, fetch_test_models.GEMMA3):
        path = fetch_test_models.DEFAULT_DIR / name
        out = subprocess.run([sys.executable, "-m", "engine", "bench", "-m", str(path), "-p", str(args.p),
                              "-n", str(args.n), "-t", str(args.t), "-r", str(args.r), "--llama-cpp", "--json"],
                             capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        for key, n in (("pp", args.p), ("tg", args.n)):
            ours, ref = res[key]["median"], res["llama_cpp"][key]["median"]
            print(f"| {name} | {key}{n} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
