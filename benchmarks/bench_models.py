"""Prompt (pp) and generation (tg) speed of the real test models, beside llama.cpp in the same run.

    python benchmarks/bench_models.py [-p 128] [-n 64] [-t 2] [-r 3] [--requant Q8_0,Q4_K_M,Q6_K]

Runs `python -m engine bench --llama-cpp --json` for SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (fetched
by tools/fetch_test_models.py) and for SmolLM2 re-quantized by llama.cpp itself to each `--requant` type
(written once next to the test models, `requant/`), and prints a markdown table with medians and the
ratio ours / llama.cpp.
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


# llama.cpp's LLAMA_FTYPE_MOSTLY_* ids of the re-quantizations issue 11 measures
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15,
          "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30}


def requantized(src: Path, qname: str) -> Path:
    """SmolLM2 re-quantized to `qname` by llama.cpp (llama-cpp-python), made once."""
    out = src.parent / "requant" / f"{src.stem.split('.')[0]}.{qname}.gguf"
    if not out.exists():
        if qname not in FTYPES:
            raise SystemExit(f"unknown re-quantization {qname!r}; known: {', '.join(FTYPES)}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        # in a child process: llama.cpp logs every tensor on stderr
        code = ("import llama_cpp, sys; p = llama_cpp.llama_model_quantize_default_params(); "
                f"p.ftype = {FTYPES[qname]}; p.allow_requantize = True; p.nthread = 2; "
                f"sys.exit(llama_cpp.llama_model_quantize({str(src)!r}.encode(), {str(tmp)!r}.encode(), p))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"llama.cpp failed to quantize {src.name} to {qname}: {done.stderr[-2000:]}")
        tmp.rename(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--requant", default="Q8_0,Q4_K_M,Q6_K",
                    help="comma-separated llama.cpp types to re-quantize SmolLM2 to and measure too ('' for none)")
    args = ap.parse_args(argv)
    smollm2 = fetch_test_models.DEFAULT_DIR / fetch_test_models.SMOLLM2
    paths = [smollm2, fetch_test_models.DEFAULT_DIR / fetch_test_models.GEMMA3]
    paths += [requantized(smollm2, q) for q in args.requant.split(",") if q]
    print("| model | test | ours t/s (median) | llama.cpp t/s (median) | ratio |")
    print("|---|---|---|---|---|")
    for path in paths:
        name = path.name
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
