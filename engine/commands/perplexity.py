"""`perplexity -m MODEL -f TEXT [-c 512] [--chunks N]`: llama-perplexity's measurement (engine/perplexity.py).

    python -m engine perplexity -m base.gguf -f wiki.txt -c 512 --kl-divergence-base base.kld   # PPL, saves logits
    python -m engine perplexity -m quant.gguf --kl-divergence-base base.kld --kl-divergence     # KLD vs the base

The running estimate and the final "PPL = X +/- Y" go to stdout, the progress to stderr.
"""

from __future__ import annotations

import sys
import time

from .common import add_model_args

HELP = "perplexity of a model on a text (llama-perplexity), and KL-divergence against a base model's logits"


def add_arguments(p):
    add_model_args(p)
    p.set_defaults(ctx_size=512)
    p.add_argument("-f", "--file", default=None, help="the text to measure on (UTF-8)")
    p.add_argument("--chunks", type=int, default=-1, help="at most this many chunks of -c tokens (default: all)")
    p.add_argument("--kl-divergence-base", default=None, metavar="FILE",
                   help="with -f: save the scored log-probabilities here (llama.cpp's format); "
                        "with --kl-divergence: the base to compare with")
    p.add_argument("--kl-divergence", action="store_true",
                   help="compare this model with the base saved in --kl-divergence-base (no -f needed)")


def _err(msg: str):
    print(msg, file=sys.stderr, flush=True)


def main(args) -> int:
    from engine.perplexity import BaseLogits, PerplexityError

    try:
        if args.kl_divergence:
            if not args.kl_divergence_base:
                raise PerplexityError("--kl-divergence needs --kl-divergence-base FILE (saved by a run with -f)")
            base = BaseLogits.read(args.kl_divergence_base)
            args.ctx_size = base.n_ctx
            return _kld(args, base)
        if not args.file:
            raise PerplexityError("give the text with -f FILE (or --kl-divergence with a saved base)")
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
        return _ppl(args, text)
    except (PerplexityError, OSError, UnicodeDecodeError) as e:
        _err(f"error: {e}")
        return 1


def _ppl(args, text: str) -> int:
    from engine.perplexity import count_chunks, perplexity

    from .common import load_engine

    eng = load_engine(args)
    _err("perplexity: tokenizing the input ..")
    tokens = eng.tokenize(text, add_bos=True)
    n_chunk = count_chunks(len(tokens), args.ctx_size, args.chunks)
    _err(f"perplexity: {len(tokens)} tokens; calculating perplexity over {n_chunk} chunks, n_ctx={args.ctx_size}")
    t0 = time.perf_counter()

    def on_chunk(i, estimate):
        if i == 0:
            _err(f"perplexity: {time.perf_counter() - t0:.2f} seconds per pass - ETA "
                 f"{(time.perf_counter() - t0) * n_chunk / 60:.2f} minutes")
        sys.stdout.write(f"[{i + 1}]{estimate:.4f},")
        sys.stdout.flush()

    save = open(args.kl_divergence_base, "wb") if args.kl_divergence_base else None
    try:
        r = perplexity(eng, tokens, args.ctx_size, args.chunks, save=save, on_chunk=on_chunk)
    finally:
        if save:
            save.close()
    print()
    print(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_error:.5f}")
    if save:
        _err(f"perplexity: saved the log-probabilities of {r.count} tokens to {args.kl_divergence_base}")
    return 0


def _kld(args, base) -> int:
    from engine.perplexity import kl_divergence

    from .common import load_engine

    eng = load_engine(args)
    _err(f"kl-divergence: {base.n_chunk} chunks of {base.n_ctx} tokens from {base.path}")
    print("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
          "Δp RMS            Same top p")

    def on_chunk(i, k):
        ppl, ppl_e = k.ppl
        r, r_e = k.log_ppl_ratio
        kl, kl_e = k.kld
        rms, rms_e = k.p_diff_rms
        top, top_e = k.same_top
        print(f"{i + 1:4d}    {ppl:9.4f} ± {ppl_e:9.4f}    {r:10.5f} ± {r_e:10.5f}    {kl:10.5f} ± {kl_e:10.5f}"
              f"    {100 * rms:6.3f} ± {100 * rms_e:6.3f} %    {100 * top:6.3f} ± {100 * top_e:6.3f} %", flush=True)

    k = kl_divergence(eng, base, args.chunks, on_chunk=on_chunk)
    ppl, ppl_e = k.ppl
    bppl, bppl_e = k.ppl_base
    r, r_e = k.log_ppl_ratio
    kl, kl_e = k.kld
    rms, rms_e = k.p_diff_rms
    top, top_e = k.same_top
    print()
    print("====== Perplexity statistics ======")
    print(f"Mean PPL(Q)                   : {ppl:10.6f} ± {ppl_e:10.6f}")
    print(f"Mean PPL(base)                : {bppl:10.6f} ± {bppl_e:10.6f}")
    print(f"Mean ln(PPL(Q)/PPL(base))     : {r:10.6f} ± {r_e:10.6f}")
    print()
    print("====== KL divergence statistics ======")
    print(f"Mean    KLD: {kl:10.6f} ± {kl_e:10.6f}")
    print(f"Maximum KLD: {max(k.kld_values):10.6f}")
    for frac in (0.999, 0.99, 0.95, 0.90, 0.5, 0.10, 0.05, 0.01):
        label = "Median " if frac == 0.5 else f"{100 * frac:4.1f}%  "
        print(f"{label} KLD: {k.percentile('kld_values', frac):10.6f}")
    print(f"Minimum KLD: {min(k.kld_values):10.6f}")
    print()
    print("====== Token probability statistics ======")
    print(f"Mean    Δp: {100 * k.sum_p_diff / k.count:6.3f} %")
    print(f"RMS Δp    : {100 * rms:6.3f} ± {100 * rms_e:5.3f} %")
    print(f"Same top p: {100 * top:6.3f} ± {100 * top_e:5.3f} %")
    return 0
