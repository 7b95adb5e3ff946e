"""Symbol names that stay unique across processes, for kernels cached on disk.

Numba names a compiled function's symbol by its qualified name, its argument types and a per-process
counter (`FunctionIdentity._unique_ids`, counting from 1 in every process). The kernels here are made
by factories -- one closure per type and variant, all with the same qualified name (rows_int's
`dot`, gemm_int's `run`, the drivers' `groups`) -- and each cached driver carries the kernels it calls
under those names. Two drivers compiled in *different* processes (a first run's compile helpers, or
two runs) can therefore hold different kernels under one symbol; loaded into one process, the JIT
links both callers to whichever definition came first: measured, a Q6_K prompt product computed with
Q4_1's GEMM (NaN) after a Q4_1 product in the same process.

So every process starts numba's counter at a random 40-bit offset: names stay sequential and unique
within a process and collide across processes with negligible probability. Installed before any
kernel is compiled; drivers.KERNEL_HASH includes SCHEME, so drivers cached under the old names are
never loaded.
"""

from __future__ import annotations

import itertools
import secrets

SCHEME = "symbols: random per-process uid base"


def install() -> bool:
    """Start numba's function counter at a random offset (idempotent); whether it is installed."""
    try:
        from numba.core.bytecode import FunctionIdentity
    except ImportError:  # pragma: no cover - another numba
        return False
    ids = getattr(FunctionIdentity, "_unique_ids", None)
    if ids is None:  # pragma: no cover - another numba
        return False
    if getattr(FunctionIdentity, "_ggufpy_random_base", False):
        return True
    FunctionIdentity._unique_ids = itertools.count(secrets.randbits(40) << 8)
    FunctionIdentity._ggufpy_random_base = True
    return True


install()
