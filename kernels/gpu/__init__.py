"""GPU backends: CUDA / ROCm through CuPy, OpenCL through pyopencl, one kernel source for all.

    kernels/gpu/src/*.cl, *.h   the kernels, one family a file, in the common subset of OpenCL C and
                                CUDA C++ (src/prelude.h)
    build.py                    sources per dialect, fault injection (GGUFPY_FAIL_KERNEL)
    runtime_cuda.py             CuPy: buffers, NVRTC builds, launches, CUDA graphs
    runtime_opencl.py           pyopencl: buffers, builds, launches (PoCL in CI)
    backend.py                  DeviceBackend: every op of the protocol, over either runtime
    products.py, attention.py   the two big op families (mixins of DeviceBackend)
    graphs.py                   decode steps recorded once, replayed (CUDA graphs; launch lists on OpenCL)
    array.py                    DArray (activations on the device), DeviceTensor (weights)

Importing this package imports neither cupy nor pyopencl; the backend classes below do, when
instantiated.
"""

from __future__ import annotations

from .backend import DeviceBackend


class OpenCLBackend(DeviceBackend):
    """`--backend opencl`: the first OpenCL GPU, else any OpenCL device (PoCL on the CPU)."""

    name = "opencl"

    def __init__(self, n_threads: int | None = None, activations: str = "llama.cpp", device: int | None = None,
                 gpu_only: bool = False):
        from .runtime_opencl import OpenCLRuntime

        super().__init__(OpenCLRuntime(device, gpu_only=gpu_only), n_threads, activations)


class CudaBackend(DeviceBackend):
    """`--backend cuda`: an NVIDIA GPU through CuPy (NVRTC). Decode steps run as CUDA graphs."""

    name = "cuda"
    _want_hip = False

    def __init__(self, n_threads: int | None = None, activations: str = "llama.cpp", device: int | None = None):
        from .runtime_cuda import CudaRuntime

        super().__init__(CudaRuntime(device, want_hip=self._want_hip), n_threads, activations)

    def _new_capture(self):
        from .graphs import CudaCapture, LaunchRecord

        return CudaCapture(self) if self.rt.supports_graphs else LaunchRecord(self)


class RocmBackend(CudaBackend):
    """`--backend rocm`: an AMD GPU through a ROCm build of CuPy (hipRTC compiles the same sources)."""

    name = "rocm"
    _want_hip = True


__all__ = ["CudaBackend", "DeviceBackend", "OpenCLBackend", "RocmBackend"]
