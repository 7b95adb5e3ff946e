"""Compute backends behind one small protocol (`kernels.base.Backend`).

Backends are registered as "module:Class" strings so that importing this package loads neither
numba nor cupy nor pyopencl; `get_backend` imports the one asked for.
"""

from __future__ import annotations

import importlib

from .base import Backend, KernelError, RopeParams

BACKENDS: dict[str, str] = {
    "numpy": "kernels.reference:NumpyBackend",
    "cpu": "kernels.numba_cpu:NumbaBackend",
    "cuda": "kernels.gpu:CudaBackend",
    "rocm": "kernels.gpu:RocmBackend",
    "opencl": "kernels.gpu:OpenCLBackend",
}
ALIASES = {"reference": "numpy", "numba": "cpu"}
AUTO_ORDER = ("cpu", "numpy")


def get_backend(name: str = "auto", **kwargs) -> Backend:
    """Instantiate a backend by name ("cpu", "numpy", or "auto": the best that works here)."""
    if name == "auto":
        errors = []
        for cand in AUTO_ORDER:
            try:
                return get_backend(cand, **kwargs)
            except (ImportError, KernelError) as e:
                errors.append(f"{cand}: {e}")
        raise KernelError("no backend works here: " + "; ".join(errors))
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise KernelError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}, auto")
    module, cls = BACKENDS[key].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["BACKENDS", "Backend", "KernelError", "RopeParams", "get_backend"]
