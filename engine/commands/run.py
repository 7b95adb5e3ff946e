"""`run [-m MODEL] [PROMPT]`: RamaLama's `run`: one answer to PROMPT, or a chat REPL without one.

Piped stdin is appended to the prompt (`cat notes.txt | python -m engine run "Summarise:"`).
"""

from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load_engine, sampling_kwargs

HELP = "chat with a model: one answer to PROMPT, or an interactive chat"


def add_arguments(p):
    add_model_args(p)
    p.add_argument("prompt", nargs="*", help="the prompt (omit for an interactive chat)")
    add_sampling_args(p)
    p.add_argument("--chat-template", default=None, help="named template instead of the model's (e.g. chatml, gemma)")
    p.add_argument("--system", default=None, help="a system message")


def _answer(eng, messages, args) -> str:
    parts = []
    for piece in eng.chat(messages, template=args.chat_template, stream=True, **sampling_kwargs(args)):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
        parts.append(piece.text)
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
    except ContextLengthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
