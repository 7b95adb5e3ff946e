"""Structured output's cost: decode tokens/s with a JSON schema against without one, the mask per token,
and schema compile time (the 20 schemas of tests/data/json_schemas.json).

    python benchmarks/bench_structured.py [-n 64] [-r 3] [-t 2] [--json]

Both runs decode the same number of tokens from the same prompt, greedily: the schema holds one long
string (minLength 4000) so the constrained run cannot stop early, and the unconstrained one ignores
end-of-generation by running the loop for exactly n tokens (Engine.generate with the EOG tokens
biased away). The tokenizer handed to llguidance is built once per model, before timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import fetch_test_models  # noqa: E402

from engine.constrain import compile_grammar, llg_tokenizer  # noqa: E402
from engine.engine import Engine  # noqa: E402

LONG = {"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}}, "required": ["story"]}
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper, as JSON."}]


def decode_tps(eng: Engine, n: int, schema) -> tuple[float, int]:
    no_eog = {t: -1e9 for t in eng.tokenizer.eog_ids}
    r = eng.chat(PROMPT, max_tokens=n, temperature=0, logit_bias=no_eog, cache_prompt=False,
                 **({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
                    if schema else {}))
    t = r.timings
    return (1e3 * (t.predicted_n - 1) / t.predicted_ms if t.predicted_ms else 0.0), t.predicted_n


def mask_us(eng: Engine, n: int) -> float:
    """Mean time of one mask (compute + apply) along the constrained output."""
    import numpy as np

    g = compile_grammar(eng.tokenizer, json_schema=LONG)
    c = g.constraint()
    ids = eng.tokenize('{"story": "' + "Once upon a time there was a keeper. " * 40, add_bos=False)[:n]
    logits = np.zeros(eng.n_vocab, np.float32)
    t0 = time.perf_counter()
    for i in ids:
        c.mask(logits)
        c.accept(i)
    return 1e6 * (time.perf_counter() - t0) / len(ids)


def compile_ms(eng: Engine) -> list[float]:
    schemas = json.loads((ROOT / "tests" / "data" / "json_schemas.json").read_text())["schemas"]
    out = []
    for s in schemas:
        t0 = time.perf_counter()
        compile_grammar(eng.tokenizer, json_schema=s["schema"]).constraint()  # compile + first matcher
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=64, help="tokens to decode per run")
    ap.add_argument("-r", type=int, default=3, help="repetitions (median reported)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for name, file in (("SmolLM2-135M-Instruct Q4_1", fetch_test_models.SMOLLM2),
                       ("Gemma 3 270M Q4_K_M", fetch_test_models.GEMMA3)):
        eng = Engine.load(fetch_test_models.DEFAULT_DIR / file, n_ctx=1024, n_threads=args.threads)
        t0 = time.perf_counter()
        llg_tokenizer(eng.tokenizer)
        vocab_ms = 1e3 * (time.perf_counter() - t0)
        decode_tps(eng, 8, None)  # warm up (JIT, caches)
        decode_tps(eng, 8, LONG)
        free, constrained = [], []
        for _ in range(args.r):  # interleaved so machine load hits both alike
            free.append(decode_tps(eng, args.n, None)[0])
            constrained.append(decode_tps(eng, args.n, LONG)[0])
        comp = compile_ms(eng)
        rows.append({"model": name, "n": args.n, "free_tps": statistics.median(free),
                     "schema_tps": statistics.median(constrained),
                     "ratio": statistics.median(constrained) / statistics.median(free),
                     "mask_us": mask_us(eng, args.n), "compile_ms_median": statistics.median(comp),
                     "compile_ms_max": max(comp), "vocab_ms": vocab_ms})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| model | decode t/s, free | decode t/s, JSON schema | ratio | mask per token | schema compile "
          "(median / max of 20) | vocabulary to llguidance (once) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['free_tps']:.1f} | {r['schema_tps']:.1f} | {r['ratio']:.2f} | "
              f"{r['mask_us']:.0f} µs | {r['compile_ms_median']:.1f} / {r['compile_ms_max']:.1f} ms | "
              f"{r['vocab_ms']:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
