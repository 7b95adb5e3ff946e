"""`DeviceBackend`: the backend protocol on a GPU (or PoCL), over a small runtime.

One class serves CUDA, ROCm and OpenCL. What differs between them is the runtime
(`runtime_cuda.CudaRuntime`, `runtime_opencl.OpenCLRuntime`: buffers, builds, launches) and the
dialect the same kernel sources are compiled in (`build.py`, `src/prelude.h`). Everything above the
runtime, i.e. which kernel each op launches with which arguments, is this file and its two mixins
(`products.py`: quantized products and embedding rows; `attention.py`: KV cache and attention), so
the code CI proves on PoCL is the code that runs on a GPU.

Data stays on the device: weights are uploaded once (`upload`), activations are `DArray`s, the KV
cache is an f16 device array written in place, MoE routing happens on the device. A forward pass
moves only its inputs in (token ids, positions: `ints`) and the logits out (`to_numpy`).

Kernel launches: `launch(family, kernel, global_size, local_size, *args)`. Arguments are DArrays,
DeviceTensors, Python ints (passed as int32) and floats (float32); None is a 4-byte dummy buffer
for an optional pointer the kernel is told to ignore.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from kernels.base import KernelError, RopeParams, check_activations
from kernels.ops_numpy import check_rope, rope_freq_factors, rope_scalars

from .array import DArray, DeviceTensor
from .attention import AttentionOps
from .graphs import GraphOps
from .products import ProductOps

F32 = np.float32
ROW_WG = 64            # work-group size of the row kernels (norms, softmax)
ELT_WG = 64            # work-group size of the elementwise kernels


def _round_up(n: int, m: int) -> int:
    return (int(n) + m - 1) // m * m


class DeviceBackend(ProductOps, AttentionOps, GraphOps):
    name = "device"
    is_device = True
    batch_invariant = False  # a batched step's rows may round differently from one sequence alone (see matmul)
    # not yet: column slices of a product's device array would need kernels that take strided rows
    # (and a GPU session to measure them); the products stay separate on the devices
    fuses_products = False
    attention_spans = False  # a batch's sequences keep their own caches: attention runs per sequence

    def __init__(self, runtime, n_threads: int | None = None, activations: str = "llama.cpp"):
        self.rt = runtime
        self.n_threads = n_threads or 1
        self.activations = check_activations(activations)
        self.device_name = runtime.device_name
        self._programs: dict = {}
        self._dummy = runtime.alloc(4)
        self._uploaded = 0  # bytes of weights on the device
        self.launches = 0  # kernels launched from Python (replays of a recorded step not counted)
        self._staging = None  # the capture in progress (graphs.py), which takes the step's inputs
        # one forward pass at a time per device (server slots share a model): launches, kernel
        # arguments and a recording in progress must not interleave
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ kernels
    def kernel(self, family: str, name: str, defines: dict | None = None):
        key = (family, tuple(sorted((defines or {}).items())))
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = self.rt.build(family, defines)
        try:
            return prog[name]
        except KeyError:
            raise KernelError(f"kernel family {family!r} has no kernel {name!r}") from None

    def _arg(self, a):
        if isinstance(a, (DArray, DeviceTensor)):
            return a.buf
        if a is None:
            return self._dummy
        if isinstance(a, (bool, np.bool_)):
            return np.int32(bool(a))
        if isinstance(a, (int, np.integer)):
            return np.int32(a)
        if isinstance(a, (float, np.floating)):
            return np.float32(a)
        raise TypeError(f"cannot pass {type(a).__name__} to a kernel")

    def launch(self, family: str, name: str, gsize, lsize, *args, defines: dict | None = None):
        gsize = tuple(gsize) if isinstance(gsize, (tuple, list)) else (gsize,)
        lsize = tuple(lsize) if isinstance(lsize, (tuple, list)) else (lsize,)
        gsize = tuple(_round_up(max(g, 1), l) for g, l in zip(gsize, lsize))
        kern = self.kernel(family, name, defines)
        args = [self._arg(a) for a in args]
        self.launches += 1
        if self._recording is not None:
            self._recording.append((self.rt.launch, (name, kern, gsize, lsize, args)))
        self.rt.launch(name, kern, gsize, lsize, args)

    def copy_bytes(self, dst, src, nbytes: int, dst_offset: int = 0, src_offset: int = 0):
        """Device-to-device copy between buffers (recorded into a step graph like a launch)."""
        if self._recording is not None:
            self._recording.append((self.rt.copy, (dst, src, nbytes, dst_offset, src_offset)))
        self.rt.copy(dst, src, nbytes, dst_offset, src_offset)

    def zero_bytes(self, buf, nbytes: int):
        if self._recording is not None:
            self._recording.append((self.rt.zero, (buf, nbytes)))
        self.rt.zero(buf, nbytes)

    def warm_up(self, families=("elementwise", "norm_rope", "moe", "attention")):
        """Build the kernel families a forward pass needs now, so a broken build fails at load."""
        for fam in families:
            self.kernel(fam, next(iter(self._family_kernels(fam))))

    def _family_kernels(self, family):
        from . import build

        return build.kernel_names(family)

    # ------------------------------------------------------------------ arrays and transfers
    def empty(self, shape, dtype=F32) -> DArray:
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return DArray(self, self.rt.alloc(n), shape, dtype)

    def zeros(self, shape, dtype=F32) -> DArray:
        a = self.empty(shape, dtype)
        self.zero_bytes(a.buf, a.nbytes)
        return a

    def asarray(self, x) -> DArray:
        if isinstance(x, DArray):
            return x
        x = np.ascontiguousarray(x, dtype=F32)
        a = self.empty(x.shape, F32)
        self.rt.write(a.buf, x)
        return a

    def ints(self, x, slot: str | None = None) -> DArray:
        """int32 inputs of a forward pass (token ids, positions). While a CUDA graph is captured the
        copy goes through a page-locked staging buffer named `slot`, which a replay refills."""
        x = np.ascontiguousarray(x, dtype=np.int32)
        if self._staging is not None and slot is not None:
            return self._staging.input(slot, x)
        a = self.empty(x.shape, np.int32)
        self.rt.write(a.buf, x)
        return a

    def to_numpy(self, x) -> np.ndarray:
        if not isinstance(x, DArray):
            return np.asarray(x)
        out = np.empty(x.shape, x.dtype)
        self.rt.read(x.buf, out)
        return out

    def take_rows(self, x: DArray, start: int, stop: int) -> DArray:
        row = x.nbytes // max(x.shape[0], 1)
        out = DArray(self, self.rt.alloc(row * (stop - start)), (stop - start, *x.shape[1:]), x.dtype)
        self.copy_bytes(out.buf, x.buf, row * (stop - start), 0, row * start)
        return out

    def concat_rows(self, parts) -> DArray:
        """Arrays stacked along the first axis, one device copy each (a batched pass's sequences)."""
        parts = [self.asarray(a) for a in parts]
        if len(parts) == 1:
            return parts[0]
        tail = parts[0].shape[1:]
        if any(a.shape[1:] != tail or a.dtype != parts[0].dtype for a in parts):
            raise ValueError(f"concat_rows: parts of shapes {[a.shape for a in parts]} do not stack")
        out = self.empty((sum(a.shape[0] for a in parts), *tail), parts[0].dtype)
        at = 0
        for a in parts:
            if a.nbytes:
                self.copy_bytes(out.buf, a.buf, a.nbytes, at, 0)
            at += a.nbytes
        return out

    def sync(self):
        self.rt.sync()

    # ------------------------------------------------------------------ elementwise
    def _binary(self, name: str, a: DArray, b) -> DArray:
        if not isinstance(b, DArray):
            if name == "mul" and np.ndim(b) == 0:
                out = self.empty(a.shape)
                self.launch("elementwise", "scale", a.size, ELT_WG, a, out, a.size, float(b))
                return out
            b = self.asarray(b)
        if b.size != a.size and (a.size % max(b.size, 1) or b.shape[-1] != a.shape[-1]):
            raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast (same, or rows of the last axis)")
        if b.size > a.size:
            a, b = b, a
        out = self.empty(a.shape)
        self.launch("elementwise", name, a.size, ELT_WG, a, b, out, a.size, b.size)
        return out

    def add(self, a, b) -> DArray:
        return self._binary("add", a, b)

    def mul(self, a, b) -> DArray:
        return self._binary("mul", a, b)

    def _unary(self, name: str, x: DArray, *scalars) -> DArray:
        x = self.asarray(x)
        out = self.empty(x.shape)
        self.launch("elementwise", name, x.size, ELT_WG, x, out, x.size, *scalars)
        return out

    def silu(self, x):
        return self._unary("silu", x)

    def gelu(self, x):
        return self._unary("gelu", x)

    def softcap(self, x, cap: float):
        return self._unary("softcap", x, float(cap))

    def _glu(self, name: str, gate, up, *scalars) -> DArray:
        gate, up = self.asarray(gate), self.asarray(up)
        if gate.shape != up.shape:
            raise ValueError(f"{name}: gate {gate.shape} and up {up.shape} differ")
        out = self.empty(gate.shape)
        self.launch("elementwise", name, gate.size, ELT_WG, gate, up, out, gate.size, *scalars)
        return out

    def swiglu(self, gate, up):
        return self._glu("swiglu", gate, up)

    def geglu(self, gate, up):
        return self._glu("geglu", gate, up)

    def swiglu_oai(self, gate, up, alpha: float, limit: float):
        return self._glu("swiglu_oai", gate, up, float(alpha), float(limit))

    # ------------------------------------------------------------------ rows: norms, softmax
    def rms_norm(self, x, weight, eps: float):
        x = self.asarray(x)
        n = x.shape[-1]
        rows = x.size // n
        if weight is not None:
            weight = self.asarray(weight)
            if weight.size != n:
                raise ValueError(f"rms_norm: weight of {weight.size} for rows of {n}")
        out = self.empty(x.shape)
        self.launch("norm_rope", "rms_norm", rows * ROW_WG, ROW_WG, x, weight, out, n, float(eps), weight is not None)
        return out

    def softmax(self, x):
        x = self.asarray(x)
        n = x.shape[-1]
        out = self.empty(x.shape)
        self.launch("norm_rope", "softmax_rows", (x.size // n) * ROW_WG, ROW_WG, x, out, n)
        return out

    def rope(self, x, positions, p: RopeParams):
        x = self.asarray(x)
        shape = x.shape
        x3 = x.reshape(shape[0], 1, shape[1]) if x.ndim == 2 else x
        check_rope(x3.shape, p)
        pos = positions if isinstance(positions, DArray) else self.ints(np.asarray(positions).reshape(-1))
        if pos.size != x3.shape[0]:
            raise ValueError(f"rope: {pos.size} positions for {x3.shape[0]} tokens")
        theta_scale, freq_scale, ext_factor, mscale, low, high = rope_scalars(p)
        ff = self._freq_factors(p)
        n_tok, n_head, head_dim = x3.shape
        out = self.empty(shape)
        half = p.n_dims // 2
        self.launch("norm_rope", "rope", (head_dim // 2, n_head, n_tok), (min(64, _pow2_at_least(head_dim // 2)), 1, 1),
                    x3, pos, out, n_head, head_dim, p.n_dims, p.mode == "neox", float(theta_scale), float(freq_scale),
                    float(ext_factor), float(mscale), float(low), float(high), ff, ff is not None, half)
        return out

    def _freq_factors(self, p: RopeParams):
        ff = rope_freq_factors(p)
        if ff is None:
            return None
        key = ("ff", ff.tobytes())
        cache = self.__dict__.setdefault("_ff_cache", {})
        if key not in cache:
            cache[key] = self.asarray(ff)
        return cache[key]

    # ------------------------------------------------------------------ mixture of experts
    def moe_route(self, logits, n_used: int, gating: str = "softmax", norm: bool = True):
        """Choose `n_used` experts per token from router `logits` (n_tok, n_expert) on the device.

        gating "softmax" (Mixtral, Qwen3-MoE): softmax over all experts, top-k of the
        probabilities, renormalised when `norm`. "softmax_weight" (gpt-oss): top-k of the raw
        logits, softmax over the chosen. Returns (ids int32 (n_tok, k), weights f32 (n_tok, k))."""
        logits = self.asarray(logits)
        n_tok, n_expert = logits.shape
        if not 0 < n_used <= min(n_expert, 32):
            raise ValueError(f"moe_route: {n_used} experts of {n_expert} (at most 32)")
        mode = {"softmax": 0, "softmax_weight": 1}.get(gating)
        if mode is None:
            raise ValueError(f"unknown gating {gating!r} (softmax | softmax_weight)")
        ids = self.empty((n_tok, n_used), np.int32)
        w = self.empty((n_tok, n_used))
        self.launch("moe", "moe_route", n_tok, 1, logits, ids, w, n_expert, n_used, mode, bool(norm))
        return ids, w

    def moe_combine(self, d, weights):
        """sum over slots of weights[t, u] * d[t, u, :]: (n_tok, n_used, n) -> (n_tok, n)."""
        d, weights = self.asarray(d), self.asarray(weights)
        n_tok, n_used, n = d.shape
        out = self.empty((n_tok, n))
        self.launch("moe", "moe_combine", (n, n_tok), (ELT_WG, 1), d, weights, out, n_used, n)
        return out

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device_name, "memory": self.rt.total_memory,
                "weights_bytes": self._uploaded}


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def progress(done: int, total: int, label: str = "uploading weights") -> None:
    """A one-line progress bar on stderr for large uploads (only on a terminal)."""
    if not sys.stderr.isatty() or total < (1 << 30):
        return
    frac = done / total
    bar = "#" * int(frac * 30)
    sys.stderr.write(f"\r{label} [{bar:<30}] {done / 2**30:.1f}/{total / 2**30:.1f} GiB")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
