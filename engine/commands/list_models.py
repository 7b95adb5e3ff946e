"""`list` (`ls`): the models in the store, as `ollama list` shows them: name, size, quant, architecture,
when pulled. `--json` prints the manifests."""

from __future__ import annotations

import json
import time

HELP = "list the models in the local store (name, size, quant, architecture, when pulled)"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print the store's manifests as JSON")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def rows(manifests: list[dict]) -> list[list[str]]:
    out = []
    for m in sorted(manifests, key=lambda m: m["ref"]):
        info = m.get("info", {})
        size = sum(f["size"] for f in m["files"] if f.get("role") == "model")
        out.append([m["ref"], human_size(size), str(info.get("quant") or "?"), str(info.get("architecture") or "?"),
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(m.get("pulled", 0)))])
    return out


def main(args) -> int:
    from engine.store import Store

    store = Store()
    manifests = store.manifests()
    if args.json:
        print(json.dumps(manifests, indent=1))
        return 0
    table = [["NAME", "SIZE", "QUANT", "ARCH", "PULLED"], *rows(manifests)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
