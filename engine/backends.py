"""Choosing where a model runs: backend names, `auto`, devices, partial offload, device memory.

`open_backend("auto")` takes, in order, a CUDA or ROCm GPU (CuPy), an OpenCL GPU (pyopencl), the
CPU (Numba). PoCL, an OpenCL implementation on the CPU, is a device of kind "cpu" and is used only
when asked for by name (`--backend opencl`): it is there to prove the GPU kernels in CI. A GPU that
is found but fails (no driver, a kernel that will not build) costs one warning, then the next
candidate is tried; a machine with no GPU at all picks the CPU silently.

`plan_offload` checks, before a byte is uploaded, that the weights and KV cache placed on a device
fit in its memory, and otherwise says how much is needed and how many layers would fit (`-ngl`).
"""

from __future__ import annotations

import sys
import warnings

from kernels import KernelError, get_backend

GPU_BACKENDS = ("cuda", "rocm", "opencl")
BACKEND_CHOICES = ("auto", "cpu", "numpy", "cuda", "rocm", "opencl")


class DeviceMemoryError(KernelError):
    """The model (or the layers asked for) does not fit in the device's memory."""


def warn(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def list_devices() -> list[dict]:
    """Every device found: CUDA/ROCm GPUs through CuPy, then OpenCL devices (PoCL among them)."""
    from kernels.gpu.runtime_cuda import list_devices as cuda_devices
    from kernels.gpu.runtime_opencl import list_devices as cl_devices

    out = [{k: v for k, v in d.items() if not k.startswith("_")} for d in cuda_devices() + cl_devices()]
    out.append({"backend": "cpu", "index": 0, "name": _cpu_name(), "kind": "cpu", "memory": _host_memory(),
                "platform": "Numba"})
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _host_memory() -> int:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def open_backend(name: str = "auto", n_threads: int | None = None, device: int | None = None,
                 cpu: dict | None = None, **kwargs):
    """A backend instance by name; "auto" picks the best that works here (see the module doc). `cpu`:
    options only the CPU backend takes (`weights`), given to it where it is the one opened."""
    cpu = cpu or {}
    if name != "auto":
        if name in GPU_BACKENDS:
            kwargs["device"] = device
        return get_backend(name, n_threads=n_threads, **(cpu if name == "cpu" else {}), **kwargs)
    for cand, extra in _auto_candidates(device):
        try:
            return get_backend(cand, n_threads=n_threads, **extra, **kwargs)
        except KernelError as e:
            warn(f"{cand} backend unavailable ({e}); falling back")
    return get_backend("cpu", n_threads=n_threads, **cpu, **kwargs)


def _auto_candidates(device: int | None) -> list[tuple[str, dict]]:
    """The GPU backends `auto` tries, in order. GGUFPY_AUTO_BACKENDS (e.g. "opencl,cpu") replaces the
    order, and then lets OpenCL take a device of any kind (PoCL): how the tests drive `auto` onto a
    device on a machine without a GPU."""
    import os

    from kernels.gpu.runtime_cuda import list_devices as cuda_devices
    from kernels.gpu.runtime_opencl import list_devices as cl_devices

    order = [s.strip() for s in os.environ.get("GGUFPY_AUTO_BACKENDS", "").split(",") if s.strip()]
    if order:
        return [(name, {"device": device} if name in GPU_BACKENDS else {}) for name in order if name != "cpu"]
    for d in cuda_devices():
        if device is None or d["index"] == device:
            return [(d["backend"], {"device": d["index"]})]
    if any(d["kind"] == "gpu" for d in cl_devices()):
        return [("opencl", {"device": device, "gpu_only": True})]
    return []


def host_backend(n_threads: int | None = None, activations: str = "llama.cpp", weights: str = "mapped"):
    """The CPU backend that runs the layers a partial offload leaves on the host."""
    return get_backend("cpu", n_threads=n_threads, activations=activations, weights=weights)


def cpu_weights(gguf, mmap: bool | None = None) -> str:
    """How the CPU backend holds a model's weights (its `weights`): "memory", a copy in 2 MB pages
    (kernels/numba_cpu/host_memory.py: decoding 7-13% faster measured), or "mapped", the file's memory
    map. `mmap` True/False decides (llama.cpp's --mmap/--no-mmap); None takes the copy where Linux
    gives huge pages (THP "always" or "madvise") and the tensors take at most half the memory available
    now (the file's page cache may then still hold the other copy; a model larger than that keeps the map,
    which also lets a model larger than memory run, as llama.cpp's default does)."""
    if mmap is not None:
        return "mapped" if mmap else "memory"
    from .gguf_file import _available_memory

    return "memory" if hugepages_available() and 2 * gguf.nbytes <= _available_memory() else "mapped"


# --- device memory


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def plan_offload(gguf, backend, n_layer: int, n_gpu_layers: int | None, kv_bytes_per_layer: int,
                 margin: float = 0.05) -> None:
    """Raise DeviceMemoryError if what `n_gpu_layers` puts on `backend` does not fit its memory.

    Counts the weights of the offloaded layers (`blk.N.*`), the output layer when offloaded (and the
    token embeddings when everything is), and their KV cache; keeps `margin` of the memory for
    activations and the driver."""
    if not getattr(backend, "is_device", False):
        return
    free = backend.rt.free_memory() or backend.rt.total_memory
    n = n_layer + 1 if n_gpu_layers is None or n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    per_layer = [kv_bytes_per_layer] * n_layer
    other = {"output": 0, "input": 0}
    for name, info in gguf.tensors.items():
        if name.startswith("blk."):
            per_layer[int(name.split(".")[1])] += info.nbytes
        elif name.startswith("output"):
            other["output"] += info.nbytes
        else:
            other["input"] += info.nbytes
    first = n_layer - min(n, n_layer)
    output_on = n > n_layer  # the output layer counts as layer n_layer (llama.cpp)
    # everything offloaded: the token embeddings too (once, also when they are the tied output head)
    need = sum(per_layer[first:]) + (other["output"] + other["input"] if output_on else 0)
    budget = int(free * (1 - margin))
    if need <= budget:
        return
    fit, total = 0, 0  # layers that fit with the output left on the host
    for i in range(n_layer - 1, -1, -1):  # the last layers go first, as llama.cpp offloads them
        total += per_layer[i]
        if total > budget:
            break
        fit += 1
    hint = f"-ngl {fit}" if fit else "--backend cpu"
    raise DeviceMemoryError(
        f"the model needs {_gib(need)} on {backend.device_name} ({n if n <= n_layer else 'all'} of {n_layer} "
        f"layers with their KV cache) but {_gib(free)} is free; offload fewer layers with {hint} "
        f"(n_gpu_layers={fit}), or use a smaller context")


def print_devices(file=sys.stdout) -> None:
    devs = list_devices()
    print(f"{'backend':8s} {'index':>5s}  {'kind':5s} {'memory':>10s}  name", file=file)
    for d in devs:
        mem = _gib(d["memory"]) if d.get("memory") else "?"
        print(f"{d['backend']:8s} {d['index']:>5d}  {d['kind']:5s} {mem:>10s}  {d['name']} ({d.get('platform', '')})",
              file=file)


def hugepages_available() -> bool:
    """Whether this kernel gives anonymous memory advised MADV_HUGEPAGE huge pages (THP "always" or
    "madvise"; not "never", not other platforms). Here, not in kernels/numba_cpu/host_memory.py: asking
    must not import the Numba backend where a GPU runs everything."""
    import mmap

    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode
