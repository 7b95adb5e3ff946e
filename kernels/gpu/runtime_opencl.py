"""The OpenCL runtime under the device backend: buffers, builds and launches through pyopencl.

On a machine without a GPU, PoCL (Debian's `pocl-opencl-icd`) is a real OpenCL implementation on
the CPU: CI runs every kernel on it. `--backend opencl` takes the first GPU, else the first device
of any kind (PoCL); `backend="auto"` only ever takes a GPU from here (see kernels/__init__.py).
"""

from __future__ import annotations

import numpy as np

from kernels.base import KernelError

from . import build


def _cl():
    try:
        import pyopencl as cl
    except ImportError as e:  # pragma: no cover - pyopencl is a project dependency
        raise KernelError(f"OpenCL backend needs pyopencl ({e}); pip install pyopencl") from None
    return cl


def list_devices() -> list[dict]:
    """Every OpenCL device: index, name, platform, kind (gpu/cpu/...), memory. None without pyopencl
    (as runtime_cuda lists none without CuPy), so `devices` and `auto` work on a CUDA-only install."""
    try:
        cl = _cl()
    except KernelError:
        return []
    out = []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # no ICD installed
        return out
    for p in platforms:
        try:
            devices = p.get_devices()
        except cl.Error:
            continue
        for d in devices:
            kind = "gpu" if d.type & cl.device_type.GPU else "cpu" if d.type & cl.device_type.CPU else "other"
            out.append({"backend": "opencl", "index": len(out), "name": d.name.strip(), "platform": p.name.strip(),
                        "kind": kind, "memory": int(d.global_mem_size), "_device": d})
    return out


class OpenCLRuntime:
    dialect = "opencl"

    def __init__(self, device: int | None = None, gpu_only: bool = False):
        cl = self.cl = _cl()
        devices = list_devices()
        if gpu_only:
            devices = [d for d in devices if d["kind"] == "gpu"]
        if not devices:
            raise KernelError("no OpenCL device found" + (" of kind gpu" if gpu_only else "")
                              + " (install a driver, or pocl-opencl-icd for OpenCL on the CPU)")
        if device is None:
            gpus = [d for d in devices if d["kind"] == "gpu"]
            info = (gpus or devices)[0]
        else:
            if not 0 <= device < len(devices):
                raise KernelError(f"OpenCL device {device} does not exist; found {len(devices)} "
                                  f"({', '.join(d['name'] for d in devices)})")
            info = devices[device]
        self.info = info
        self.device_name = f"{info['name']} (OpenCL, {info['platform']})"
        self.total_memory = info["memory"]
        try:
            self.ctx = cl.Context([info["_device"]])
            self.queue = cl.CommandQueue(self.ctx)
        except cl.Error as e:
            raise KernelError(f"cannot open OpenCL device {self.device_name}: {e}") from None
        self.max_local = int(info["_device"].max_work_group_size)

    # --- memory
    def alloc(self, nbytes: int):
        try:
            return self.cl.Buffer(self.ctx, self.cl.mem_flags.READ_WRITE, max(int(nbytes), 4))
        except self.cl.Error as e:
            raise KernelError(f"allocating {nbytes} bytes on {self.device_name} failed: {e}") from None

    def write(self, buf, host: np.ndarray, offset: int = 0):
        host = np.ascontiguousarray(host)
        if host.nbytes:
            self.cl.enqueue_copy(self.queue, buf, host, dst_offset=int(offset), is_blocking=True)

    def read(self, buf, out: np.ndarray, offset: int = 0) -> np.ndarray:
        if out.nbytes:
            self.cl.enqueue_copy(self.queue, out, buf, src_offset=int(offset), is_blocking=True)
        return out

    def copy(self, dst, src, nbytes: int, dst_offset: int = 0, src_offset: int = 0):
        if nbytes:
            self.cl.enqueue_copy(self.queue, dst, src, byte_count=int(nbytes), dst_offset=int(dst_offset),
                                 src_offset=int(src_offset))

    def zero(self, buf, nbytes: int):
        if nbytes:
            self.cl.enqueue_fill_buffer(self.queue, buf, np.uint8(0), 0, int(nbytes))

    def free_memory(self) -> int | None:
        return None  # core OpenCL does not say

    # --- programs
    def build(self, family: str, defines: dict | None = None) -> dict:
        """Compile a family; returns {kernel name: kernel object}."""
        build.check_build_fault(family, self.device_name)
        src = build.source(family)
        try:
            prg = self.cl.Program(self.ctx, src).build(options=build.define_flags(defines) + ["-cl-std=CL1.2"])
        except self.cl.Error as e:
            raise KernelError(f"building kernel family {family!r} on {self.device_name} failed: {e}") from None
        return {name: self.cl.Kernel(prg, name) for name in build.kernel_names(family)}

    def launch(self, name: str, kernel, gsize: tuple, lsize: tuple, args: list):
        """Run `kernel` over the NDRange `gsize` (a multiple of `lsize`) with `args` (buffers and numpy scalars)."""
        build.check_launch_fault(name, self.device_name)
        try:
            kernel.set_args(*args)
            self.cl.enqueue_nd_range_kernel(self.queue, kernel, gsize, lsize)
        except self.cl.Error as e:
            raise KernelError(f"kernel {name!r} on {self.device_name} failed: {e}") from None

    def sync(self):
        self.queue.finish()
