"""The CUDA runtime under the device backend: buffers, builds and launches through CuPy.

The same kernel sources the OpenCL runtime builds are compiled here as CUDA C++ by NVRTC
(`cupy.RawModule`); a ROCm build of CuPy compiles them with hipRTC instead, which is the `rocm`
backend. Everything runs on one non-blocking stream owned by the runtime, so that a decode step can
be captured into a CUDA graph (`capture`) and replayed with one launch.

Buffers are CuPy uint8 arrays from CuPy's memory pool; kernels get them as pointers. Graph captures
allocate from a private pool that lives as long as the graph, so no buffer a graph writes is ever
handed to anyone else (see `capture`).
"""

from __future__ import annotations

import numpy as np

from kernels.base import KernelError

from . import build


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise KernelError(f"the CUDA/ROCm backend needs CuPy ({e}); pip install 'ggufpy[cuda]' "
                          "(cupy-cuda13x; cupy-cuda12x or cupy-rocm-* for other drivers)") from None
    return cupy


def _cuda_error(e: Exception) -> bool:
    name = type(e).__name__
    return "CUDA" in name or "HIP" in name or "Compile" in name or isinstance(e, (RuntimeError, MemoryError))


def list_devices() -> list[dict]:
    """Every CUDA (or ROCm, through a HIP build of CuPy) device: index, name, memory."""
    try:
        cupy = _cupy()
        rt = cupy.cuda.runtime
        n = rt.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device: nothing to list
        return []
    backend = "rocm" if rt.is_hip else "cuda"
    out = []
    for i in range(n):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        out.append({"backend": backend, "index": i, "name": name, "kind": "gpu", "memory": int(props["totalGlobalMem"]),
                    "platform": "HIP" if rt.is_hip else f"CUDA {rt.runtimeGetVersion()}"})
    return out


class CudaRuntime:
    dialect = "cuda"

    def __init__(self, device: int | None = None, want_hip: bool | None = None):
        cupy = self.cp = _cupy()
        rt = cupy.cuda.runtime
        try:
            n = rt.getDeviceCount()
        except Exception as e:
            raise KernelError(f"no usable CUDA/ROCm device: {e}") from None
        if n == 0:
            raise KernelError("no CUDA/ROCm device found")
        if want_hip is not None and bool(rt.is_hip) != want_hip:
            raise KernelError("this CuPy is built for " + ("ROCm (use --backend rocm)" if rt.is_hip
                                                           else "CUDA (use --backend cuda)"))
        index = 0 if device is None else int(device)
        if not 0 <= index < n:
            raise KernelError(f"GPU {index} does not exist; found {n}")
        self.is_hip = bool(rt.is_hip)
        self.device = cupy.cuda.Device(index)
        info = list_devices()[index]
        self.device_name = f"{info['name']} ({'ROCm' if self.is_hip else 'CUDA'} device {index})"
        self.total_memory = info["memory"]
        self.max_local = 1024
        with self.device:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            cc = self.device.compute_capability  # "90" for sm_90
        self.arch = None if self.is_hip else f"compute_{cc}"
        self._capture_pool = None

    # --- memory
    def alloc(self, nbytes: int):
        try:
            with self.device:
                if self._capture_pool is not None:
                    mem = self._capture_pool.malloc(max(int(nbytes), 4))
                    return self.cp.ndarray((max(int(nbytes), 4),), self.cp.uint8, mem)
                return self.cp.empty(max(int(nbytes), 4), self.cp.uint8)
        except Exception as e:
            raise KernelError(f"allocating {nbytes} bytes on {self.device_name} failed: {e}") from None

    def write(self, buf, host: np.ndarray, offset: int = 0):
        host = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        if host.nbytes:
            with self.device:
                buf[offset:offset + host.nbytes].set(host, stream=self.stream)

    def read(self, buf, out: np.ndarray, offset: int = 0) -> np.ndarray:
        if out.nbytes:
            with self.device:
                view = out.reshape(-1).view(np.uint8)
                buf[offset:offset + view.nbytes].get(stream=self.stream, out=view)
                self.stream.synchronize()
        return out

    def copy(self, dst, src, nbytes: int, dst_offset: int = 0, src_offset: int = 0):
        if nbytes:
            with self.device:
                self.cp.cuda.runtime.memcpyAsync(dst.data.ptr + dst_offset, src.data.ptr + src_offset, int(nbytes),
                                                 self.cp.cuda.runtime.memcpyDeviceToDevice, self.stream.ptr)

    def zero(self, buf, nbytes: int):
        if nbytes:
            with self.device:
                self.cp.cuda.runtime.memsetAsync(buf.data.ptr, 0, int(nbytes), self.stream.ptr)

    def free_memory(self) -> int | None:
        with self.device:
            free, _total = self.cp.cuda.runtime.memGetInfo()
            pool = self.cp.get_default_memory_pool()
            return int(free + pool.free_bytes())

    # --- programs
    def build(self, family: str, defines: dict | None = None) -> dict:
        build.check_build_fault(family, self.device_name)
        options = tuple(build.define_flags(defines)) + ("--std=c++17",)
        if self.arch:
            options += (f"--gpu-architecture={self.arch}",)
        try:
            with self.device:
                mod = self.cp.RawModule(code=build.source(family), options=options, backend="nvrtc")
                mod.compile()
                return {name: mod.get_function(name) for name in build.kernel_names(family)}
        except Exception as e:
            if not _cuda_error(e):
                raise
            raise KernelError(f"building kernel family {family!r} on {self.device_name} failed: {e}") from None

    def launch(self, name: str, kernel, gsize: tuple, lsize: tuple, args: list):
        build.check_launch_fault(name, self.device_name)
        grid = tuple(g // l for g, l in zip(gsize, lsize))
        try:
            with self.device, self.stream:
                kernel(grid, tuple(lsize), tuple(args))
        except Exception as e:
            if not _cuda_error(e):
                raise
            raise KernelError(f"kernel {name!r} on {self.device_name} failed: {e}") from None

    def sync(self):
        try:
            self.stream.synchronize()
        except Exception as e:
            raise KernelError(f"{self.device_name}: {e}") from None

    # --- graphs
    @property
    def supports_graphs(self) -> bool:
        return not self.is_hip  # CuPy's stream capture is CUDA-only

    def capture(self, fn, warm=None):
        """Record `fn()` (launches and device-side copies on our stream) into a CUDA graph.

        Returns (graph, result, pool). Buffers `fn` allocates come from a private memory pool that
        the caller keeps with the graph: once the capture ends they are free in that pool, and no
        one else allocates from it, so replays may keep writing them. With `warm` (a callable that
        undoes `fn`'s host-side effects), `fn` first runs once for real in that pool, so the capture
        finds every buffer cached there and allocates nothing while capturing."""
        cp = self.cp
        pool = cp.cuda.MemoryPool()
        self._capture_pool = pool
        try:
            if warm is not None:
                with self.device, self.stream:
                    fn()
                self.stream.synchronize()
                warm()
            with self.device, self.stream:
                self.stream.begin_capture()
                try:
                    result = fn()
                finally:
                    graph = self.stream.end_capture()
        except KernelError:
            raise
        except Exception as e:
            raise KernelError(f"capturing a CUDA graph on {self.device_name} failed: {e}") from None
        finally:
            self._capture_pool = None
        return graph, result, pool

    def replay(self, graph):
        try:
            with self.device:
                graph.launch(stream=self.stream)
        except Exception as e:
            raise KernelError(f"replaying a CUDA graph on {self.device_name} failed: {e}") from None

    def write_pinned(self, buf, host: np.ndarray, offset: int = 0):
        """Copy from page-locked `host` (see `pinned`) to `buf` on the stream, without waiting: inside
        a capture this becomes a graph node that reads `host` again at every replay."""
        if host.nbytes:
            self.cp.cuda.runtime.memcpyAsync(buf.data.ptr + offset, host.ctypes.data, int(host.nbytes),
                                             self.cp.cuda.runtime.memcpyHostToDevice, self.stream.ptr)

    def pinned(self, nbytes: int) -> np.ndarray:
        """Page-locked host bytes: a copy from them can be part of a graph (read at replay time)."""
        with self.device:
            mem = self.cp.cuda.alloc_pinned_memory(max(int(nbytes), 8))
        return np.frombuffer(mem, np.uint8, max(int(nbytes), 8))
