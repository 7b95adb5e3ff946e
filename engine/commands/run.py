"""`run [-m MODEL] [PROMPT]`: RamaLama's `run`: one answer to PROMPT, or a chat REPL without one.

Piped stdin is appended to the prompt (`cat notes.txt | python -m engine run "Summarise:"`).
"""

from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load_engine, sampling_kwargs
from .structured import add_grammar_args, grammar_kwargs

HELP = "chat with a model: one answer to PROMPT, or an interactive chat"


def add_arguments(p):
    add_model_args(p)
    p.add_argument("prompt", nargs="*", help="the prompt (omit for an interactive chat)")
    add_sampling_args(p)
    add_grammar_args(p)
    p.add_argument("--chat-template", default=None, help="named template instead of the model's (e.g. chatml, gemma)")
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--hide-reasoning", action="store_true",
                   help="do not print the reasoning of models that separate it (gpt-oss); shown dimmed otherwise")
    p.add_argument("--reasoning-effort", choices=["low", "medium", "high"], default=None,
                   help="gpt-oss: the reasoning effort its system message asks for")


DIM, RESET = "\x1b[2m", "\x1b[0m"


def _answer(eng, messages, args) -> str:
    """Stream one reply: reasoning dimmed (or hidden), the answer plainly; returns the answer."""
    tty = sys.stdout.isatty()
    parts, kind = [], "content"
    kw = sampling_kwargs(args) | grammar_kwargs(args)
    if args.reasoning_effort:
        kw["reasoning_effort"] = args.reasoning_effort
    for piece in eng.chat(messages, template=args.chat_template, stream=True, **kw):
        if not piece.text and piece.kind != "tool_call":
            continue
        if piece.kind == "reasoning":
            if args.hide_reasoning:
                continue
            sys.stdout.write((DIM + piece.text + RESET) if tty else piece.text)
        elif piece.kind == "tool_call":
            if piece.text == "" and piece.name:
                sys.stdout.write(f"\n[tool call] {piece.name} ")
            sys.stdout.write(piece.text)
        else:
            if kind == "reasoning" and not args.hide_reasoning:
                sys.stdout.write("\n\n")
            sys.stdout.write(piece.text)
            parts.append(piece.text)
        kind = piece.kind
        sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def main(args) -> int:
    from engine.engine import ContextLengthError

    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        prompt = f"{prompt}\n{piped}" if prompt and piped else (prompt or piped)
    eng = load_engine(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    try:
        if prompt.strip():
            _answer(eng, messages + [{"role": "user", "content": prompt}], args)
            return 0
        while True:
            try:
                line = input("> ")
            except EOFError:
                print()
                return 0
            if line.strip() in ("/bye", "/exit", "/quit"):
                return 0
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": _answer(eng, messages, args)})
    except (ContextLengthError, ValueError) as e:  # ConstraintError: a schema or grammar that does not compile
        print(f"error: {e}", file=sys.stderr)
        return 1
