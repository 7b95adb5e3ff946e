"""`generate -m MODEL -p PROMPT`: print a completion of the prompt (llama.cpp's llama-completion)."""

from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load_engine, sampling_kwargs
from .structured import add_grammar_args, grammar_kwargs

HELP = "complete a prompt and print the text"


def add_arguments(p):
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text")
    add_sampling_args(p)
    add_grammar_args(p)
    p.add_argument("--special", action="store_true", help="parse special tokens in the prompt")
    p.add_argument("--verbose-prompt", "--timings", dest="timings", action="store_true",
                   help="print speed and token counts to stderr when done")


def main(args) -> int:
    from engine.engine import ContextLengthError

    structured = grammar_kwargs(args)
    eng = load_engine(args)
    try:
        pieces = eng.generate(args.prompt, stream=True, special=args.special, **sampling_kwargs(args), **structured)
        for piece in pieces:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
            done = piece.completion
    except (ContextLengthError, ValueError) as e:  # ConstraintError: a schema or grammar that does not compile
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    if args.timings:
        t = done.timings.as_dict()
        print(f"prompt: {t['prompt_n']} tokens, {t['prompt_per_second']:.1f} t/s; "
              f"eval: {t['predicted_n']} tokens, {t['predicted_per_second']:.1f} t/s; finish: {done.finish_reason}",
              file=sys.stderr)
    return 0
