"""`show REF`: what a model is: where it came from, its files, its GGUF metadata (architecture, size,
quant, context), its chat template, its parameters and its license (`ollama show`, `ramalama inspect`).

Works on a pulled ref (nothing is fetched: `pull` first) or on a GGUF path.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

HELP = "show a model's origin, files, metadata, chat template, parameters and license"

LICENSE_LINES = 12
# GGUF keys shown under "model" (with the architecture's prefix filled in)
ARCH_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
             "attention.head_count_kv", "expert_count", "expert_used_count", "vocab_size")


def add_arguments(p):
    p.add_argument("model", help="a pulled reference (see `list`) or a GGUF path")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--full", action="store_true", help="print the whole license")


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, np.ndarray)):
        return f"[{len(v)} items]"
    return v


def describe(path, local=None) -> dict:
    """Everything `show` prints, from the GGUF (and the store's manifest and side files, if pulled)."""
    from engine.gguf_file import GGUF
    from engine.store.pull import quant_name

    g = GGUF.open(path)
    md = g.metadata
    arch = md.get("general.architecture")
    model = {"architecture": arch, "name": md.get("general.name"), "quant": quant_name(g),
             "parameters": sum(t.n_elements for t in g.tensors.values()), "parts": len(g.parts),
             "bytes": g.nbytes}
    model.update({k: _plain(md[f"{arch}.{k}"]) for k in ARCH_KEYS if f"{arch}.{k}" in md})
    general = {k: _plain(v) for k, v in md.items()
               if k.startswith("general.") and not isinstance(v, (list, np.ndarray))}
    out = {"path": str(path), "model": model, "general": general,
           "template": md.get("tokenizer.chat_template"), "parameters": None, "license": md.get("general.license")}
    if local is not None:
        m = local.manifest
        out.update({"ref": m["ref"], "source": m["source"], "origin": m.get("origin"), "revision": m.get("revision"),
                    "pulled": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("pulled", 0))),
                    "files": [{k: f[k] for k in ("name", "role", "size", "sha256")} for f in m["files"]]})
        if local.file("template"):  # Ollama's Go template, beside the GGUF's own Jinja one
            out["ollama_template"] = local.file("template").read_text(errors="replace")
        if local.file("params"):
            out["parameters"] = json.loads(local.file("params").read_text() or "null")
        if local.file("system"):
            out["system"] = local.file("system").read_text(errors="replace")
        if local.file("license"):
            out["license"] = local.file("license").read_text(errors="replace")
        elif m.get("info", {}).get("license") and not out["license"]:
            out["license"] = m["info"]["license"]
    return out


def _print(d: dict, full: bool):
    w = sys.stdout.write
    for key in ("ref", "source", "origin", "revision", "pulled", "path"):
        if d.get(key):
            w(f"{key + ':':<10} {d[key]}\n")
    if d.get("files"):
        w("\nfiles:\n")
        for f in d["files"]:
            w(f"  {f['name']:<48} {f['role']:<9} {f['size']:>13,}  sha256:{f['sha256'][:16]}...\n")
    m = d["model"]
    w("\nmodel:\n")
    for k, v in m.items():
        if v is not None:
            w(f"  {k:<26} {v:,}\n" if isinstance(v, int) and not isinstance(v, bool) else f"  {k:<26} {v}\n")
    w("\nmetadata:\n")
    for k, v in d["general"].items():
        w(f"  {k:<44} {str(v)[:100]}\n")
    for key, title in (("template", "template (GGUF, Jinja)"), ("ollama_template", "template (Ollama, Go)"),
                       ("system", "system")):
        if d.get(key):
            w(f"\n{title}:\n")
            w("  " + d[key].rstrip("\n").replace("\n", "\n  ") + "\n")
    if d.get("parameters"):
        w("\nparameters:\n")
        for k, v in d["parameters"].items():
            w(f"  {k:<26} {json.dumps(v)}\n")
    if d.get("license"):
        lines = d["license"].rstrip("\n").splitlines()
        w("\nlicense:\n")
        for line in lines if full else lines[:LICENSE_LINES]:
            w(f"  {line}\n")
        if not full and len(lines) > LICENSE_LINES:
            w(f"  ... ({len(lines) - LICENSE_LINES} more lines; --full shows them)\n")


def main(args) -> int:
    from engine.gguf_file import GGUFError
    from engine.store import RefError, Store, parse_ref

    try:
        ref = parse_ref(args.model)
        local = None
        if ref.source == "file":
            path = ref.parts["path"]
        else:
            store = Store()
            local = store.find(ref.key)
            if local is None:
                raise RefError(f"{ref} is not in the store ({store.home}); pull it first: python -m engine pull {ref}")
            path = local.path
        d = describe(path, local)
    except (RefError, GGUFError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(d, indent=1, default=str))
    else:
        _print(d, args.full)
    return 0
