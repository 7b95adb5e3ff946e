"""`rm REF...`: remove models from the store; blobs no other ref uses are deleted with them."""

from __future__ import annotations

import sys

HELP = "remove models from the local store (a blob another name still uses is kept)"


def add_arguments(p):
    p.add_argument("model", nargs="+", help="model references, as pulled (see `list`)")


def main(args) -> int:
    from engine.store import RefError, Store, StoreError, parse_ref

    store, rc = Store(), 0
    for name in args.model:
        try:
            ref = parse_ref(name)
            if ref.source == "file":
                raise StoreError(f"{name} is a file, not a model in the store")
            if store.read_manifest(ref.key) is None:
                raise StoreError(f"{ref} is not in the store ({store.home}); see `python -m engine list`")
            freed = store.remove(ref.key)
        except (RefError, StoreError) as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(f"removed {ref}" + (f" ({len(freed)} blob{'s' if len(freed) != 1 else ''} deleted)" if freed else ""))
    return rc
