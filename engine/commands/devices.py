"""`devices`: every compute device found (CUDA/ROCm GPUs through CuPy, OpenCL devices, the CPU)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "list the devices a model can run on (backend, index, kind, memory, name)"


def add_arguments(p: argparse.ArgumentParser):
    p.add_argument("--json", action="store_true", help="print a JSON list")


def main(args) -> int:
    from engine.backends import list_devices, print_devices

    if args.json:
        json.dump(list_devices(), sys.stdout, indent=1)
        print()
        return 0
    print_devices()
    return 0
