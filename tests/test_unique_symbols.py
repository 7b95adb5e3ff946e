"""Numba names a compiled function's symbol by its qualified name, argument types and a per-process
counter that starts at 1 in every process; the kernel factories make many closures of one qualified
name, and drivers compiled by different processes (the first run's compile helpers, earlier runs) then
carried different kernels under one symbol -- a kernel cache of this project held the same
`make_gemm.<locals>.run` symbol in the cached drivers of different types, and a Q6_K prompt product
computed NaN after a Q4_1 one in the same process. kernels/numba_cpu/unique_symbols.py starts the
counter at a random offset per process; here two processes must not start it at the same place, and
the drivers' cache key carries the scheme (so drivers cached under the old names are not loaded)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIRST_ID = ("import kernels.numba_cpu; from numba.core.bytecode import FunctionIdentity; "
            "print(next(FunctionIdentity._unique_ids))")


def test_processes_number_their_functions_apart():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    firsts = {int(subprocess.run([sys.executable, "-c", FIRST_ID], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout) for _ in range(3)}
    assert len(firsts) == 3 and min(firsts) >= 1 << 8


def test_the_drivers_cache_key_carries_the_scheme(monkeypatch):
    from kernels.numba_cpu import drivers, unique_symbols

    assert unique_symbols.install()
    assert drivers.KERNEL_HASH == drivers._kernel_hash()
    monkeypatch.setattr(unique_symbols, "SCHEME", "numba's own counter")
    assert drivers._kernel_hash() != drivers.KERNEL_HASH

