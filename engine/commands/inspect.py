"""`inspect MODEL.gguf`: print the metadata and a tensor table (like gguf-py's gguf_dump)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np

HELP = "print a GGUF file's metadata and tensor table"


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("model", help="path to a .gguf file (the first part of a split model)")
    p.add_argument("--full", action="store_true", help="print long strings and arrays in full")
    p.add_argument("--no-tensors", action="store_true", help="print the metadata only")
    p.add_argument("--backend", default=None, choices=["auto", "cuda", "rocm", "opencl", "cpu", "numpy"],
                   help="also say where this model would run: the device, its memory, whether the model fits")
    p.add_argument("--device", type=int, default=None, help="GPU index (with --backend)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=None)
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context for the memory estimate")


def format_value(value, full: bool = False, width: int = 80) -> str:
    if isinstance(value, (list, np.ndarray)):
        items = list(value[: None if full else 8])
        body = ", ".join(format_value(v, full, 24) for v in items)
        more = "" if full or len(value) <= 8 else f", ... ({len(value)} items)"
        return f"[{body}{more}]"
    if isinstance(value, str):
        text = value if full or len(value) <= width else value[:width] + f"... ({len(value)} chars)"
        return repr(text)
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def main(args) -> int:
    from engine.gguf_file import GGUF, GGUFError

    try:
        g = GGUF.open(args.model)
    except GGUFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = sys.stdout
    parts = f" ({len(g.parts)} parts)" if len(g.parts) > 1 else ""
    print(f"{g.path}{parts}: GGUF v{g.parts[0].version}, {len(g.metadata)} metadata entries, "
          f"{len(g.tensors)} tensors, {human_bytes(g.nbytes)} of tensor data", file=out)
    print("\nmetadata:", file=out)
    for key, value in g.metadata.items():
        vt = "[".join(t.name.lower() for t in g.value_types[key]) + ("]" if len(g.value_types[key]) > 1 else "")
        print(f"  {key:<44} {vt:<14} {format_value(value, args.full)}", file=out)
    if args.no_tensors:
        return 0 if args.backend is None else report_backend(g, args, out)
    print(f"\ntensors (shape in ggml order, ne[0] first):", file=out)
    print(f"  {'name':<40} {'type':<8} {'shape':<22} {'bytes':>12}", file=out)
    for t in g.tensors.values():
        shape = " x ".join(str(d) for d in t.ne)
        print(f"  {t.name:<40} {t.type_name:<8} {shape:<22} {t.nbytes:>12}", file=out)
    counts = Counter(t.type_name for t in g.tensors.values())
    n_params = sum(t.n_elements for t in g.tensors.values())
    print(f"\n{n_params:,} parameters; types: " + ", ".join(f"{k} x{v}" for k, v in counts.most_common()), file=out)
    return 0 if args.backend is None else report_backend(g, args, out)


def report_backend(g, args, out) -> int:
    """Where the model would run (`inspect --backend`): the device, and whether it fits there."""
    from engine.backends import open_backend, plan_offload
    from engine.engine import _kv_bytes_per_layer
    from kernels.base import KernelError

    try:
        be = open_backend(args.backend, None, args.device)
    except KernelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    desc = be.describe() if hasattr(be, "describe") else {"backend": be.name, "device": "CPU (host memory)"}
    print(f"\nbackend: {desc['backend']} on {desc.get('device', 'the CPU')}", file=out)
    if desc.get("memory"):
        print(f"device memory: {human_bytes(desc['memory'])}", file=out)
    try:
        n_layer = int(g.require(f"{g.arch}.block_count"))
        plan_offload(g, be, n_layer, args.n_gpu_layers, _kv_bytes_per_layer(g, args.ctx_size))
        print(f"fits: yes (weights {human_bytes(g.nbytes)}, context {args.ctx_size})", file=out)
    except KernelError as e:
        print(f"fits: no: {e}", file=out)
    return 0
