"""Kernel sources and their builds: one C source per kernel family, two dialects.

Each family lives in `src/<family>.cl`, written in the common subset of OpenCL C and CUDA C++ that
`src/prelude.h` makes possible. `source(family)` returns the text both compilers get: the prelude
and every `#include "x.h"` expanded in place (once each), so neither NVRTC nor an OpenCL driver
needs an include path. `defines` specialise a family (the products family is built once per weight
type, `-DQTYPE=12`), and a runtime keeps one build per (family, defines).

Fault injection (tests and drills): `GGUFPY_FAIL_KERNEL` names kernels that must fail, comma
separated. `NAME` fails every launch of the kernel NAME, `NAME:N` only its N-th launch in this
process (a transient fault: the next request works again), `build:FAMILY` the build of a family.
The failure is a `KernelError` like a real one, raised where a real one would be, so the paths that
report or recover from faults can be proven without a broken driver.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from kernels.base import KernelError

SRC = Path(__file__).resolve().parent / "src"
FAMILIES = ("elementwise", "norm_rope", "moe", "attention", "products")
FAIL_ENV = "GGUFPY_FAIL_KERNEL"


def _product_variants() -> list[dict]:
    from .products import PRODUCT_TYPES

    return [{"QTYPE": int(t)} for t in PRODUCT_TYPES]


# family -> the define sets it is built with at run time (tools/check_cuda_kernels.py compiles each)
FAMILY_VARIANTS = {"products": _product_variants}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


@functools.lru_cache(maxsize=None)
def source(family: str) -> str:
    """The full text of a family: prelude.h, then the .cl file with its includes expanded."""
    path = SRC / f"{family}.cl"
    if not path.exists():
        raise KernelError(f"no kernel family {family!r} (looked for {path})")
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (SRC / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand("prelude.h") + f"\n#line 1 \"{family}.cl\"\n" + expand(f"{family}.cl")


def kernel_names(family: str) -> list[str]:
    """Entry points of a family, in source order (every `KERNEL void name(`)."""
    return re.findall(r"^KERNEL\s+void\s+(\w+)\s*\(", source(family), re.M)


def define_flags(defines: dict | None) -> list[str]:
    return [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]


def injected_faults() -> set[str]:
    return {s.strip() for s in os.environ.get(FAIL_ENV, "").split(",") if s.strip()}


def check_build_fault(family: str, device: str) -> None:
    if f"build:{family}" in injected_faults():
        raise KernelError(f"building kernel family {family!r} on {device} failed: fault injected by {FAIL_ENV}")


_launches: dict[str, int] = {}


def check_launch_fault(kernel: str, device: str) -> None:
    faults = injected_faults()
    if not faults:
        return
    n = _launches[kernel] = _launches.get(kernel, 0) + 1
    if kernel in faults or f"{kernel}:{n}" in faults:
        raise KernelError(f"kernel {kernel!r} on {device} failed to launch: fault injected by {FAIL_ENV}")
