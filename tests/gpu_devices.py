"""The device backends a test run can use: OpenCL always (PoCL in CI), CUDA/ROCm where a GPU is.

`device_backends()` lists (name, factory) pairs; tests parametrize over them so that the same tests
that CI runs on PoCL run through CuPy on a machine with a GPU (benchmarks/gpu_check.sh). When no
OpenCL device exists at all the GPU tests fail under GGUFPY_REQUIRE_MODELS=1 (CI) and skip otherwise.
"""

from __future__ import annotations

import functools
import os

import pytest

REQUIRE = os.environ.get("GGUFPY_REQUIRE_MODELS") == "1"
# GGUFPY_TEST_BACKENDS=cuda runs the device tests on CUDA only (gpu_check.sh); default: every one found
ONLY = [s for s in os.environ.get("GGUFPY_TEST_BACKENDS", "").split(",") if s]


@functools.lru_cache(maxsize=None)
def _available() -> tuple[str, ...]:
    from kernels.gpu.runtime_cuda import list_devices as cuda_devices
    from kernels.gpu.runtime_opencl import list_devices as cl_devices

    found = []
    if cl_devices():
        found.append("opencl")
    found += sorted({d["backend"] for d in cuda_devices()})
    return tuple(found)


def backend_names() -> list[str]:
    names = list(_available())
    if ONLY:
        names = [n for n in names if n in ONLY]
    return names or ["opencl"]


@functools.lru_cache(maxsize=None)
def device_backend(name: str, activations: str = "llama.cpp"):
    """One backend instance per (name, activations) for the whole run (builds are cached on it)."""
    from kernels import get_backend

    if name not in _available():
        if REQUIRE and name == "opencl":
            pytest.fail("no OpenCL device: CI must install pocl-opencl-icd (see .ci/run)")
        pytest.skip(f"no {name} device here")
    return get_backend(name, activations=activations)
