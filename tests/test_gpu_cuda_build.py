"""The CUDA dialect of every kernel compiles, on a machine without a GPU.

CI runs every kernel on PoCL (OpenCL); the same sources must also compile as CUDA C++. Two builds:
nvcc for sm_80 and sm_90 with warnings as errors (`tools/check_cuda_kernels.py`, which also prints
registers and spills per kernel: shown with `pytest -s`), and NVRTC through CuPy's bindings, which is
exactly how CuPy compiles them at run time (NVRTC sees no host headers, so it catches what nvcc
does not). Both are installed by .ci/run; elsewhere the tests skip when a compiler is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_devices import REQUIRE

ROOT = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, str(ROOT / "tools" / "check_cuda_kernels.py")]


def test_every_kernel_compiles_with_nvcc_for_sm80_and_sm90():
    if shutil.which("nvcc") is None:
        if REQUIRE:
            pytest.fail("nvcc is missing: CI compiles the CUDA kernels with it")
        pytest.skip("nvcc not installed")
    p = subprocess.run(TOOL + ["--arch", "sm_80", "sm_90"], capture_output=True, text=True, timeout=1200)
    print(p.stdout)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "registers" in p.stdout


def test_every_kernel_compiles_with_nvrtc_as_cupy_does():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as e:  # noqa: BLE001 - no CuPy, or no libnvrtc
        if REQUIRE:
            pytest.fail(f"CuPy's NVRTC is not usable ({e}): .ci/run installs '.[nvrtc]'")
        pytest.skip(f"NVRTC not available: {e}")
    from kernels.gpu import build
    sys.path.insert(0, str(ROOT / "tools"))
    import check_cuda_kernels

    failures = []
    for family in build.FAMILIES:
        for defines in check_cuda_kernels.variants(family):
            ok, log = check_cuda_kernels.nvrtc_build(family, defines, "sm_90")
            if not ok:
                failures.append(f"{family} {defines}: {log}")
    assert not failures, "\n".join(failures)[:4000]
