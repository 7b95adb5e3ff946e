"""Decode steps recorded once and replayed: CUDA graphs on CUDA, recorded launches on OpenCL.

A decode step of SmolLM2 is ~300 kernel launches; from Python each costs ~20 µs through CuPy, more
than the GPU needs to run them. So the step is recorded the second time it runs and replayed after
that, with one CUDA graph launch (`CudaCapture`) or, on OpenCL, by re-enqueueing the recorded
kernels with their arguments already set (`LaunchRecord`: no Python model code per token).

A replay is only right if nothing in the recorded step depends on the position: every kernel
argument is fixed, the token id and the positions come from device buffers that the replay
refills (`DeviceBackend.ints(..., slot=)` routes them to the capture's `input`), grid sizes depend on
the cache capacity, not its length, and expert ids stay on the device. The recorded launches on
OpenCL make that property testable on PoCL: a replayed step must equal a plain forward pass at
every position (tests/test_gpu_models.py).

The record lives on the KV cache it was made with (`cache.step_graph`), since its buffers are that
cache's arrays; a new cache records anew. `GGUFPY_GRAPHS=0` turns replays off.
"""

from __future__ import annotations

import os

import numpy as np

from kernels.base import KernelError


def graphs_enabled() -> bool:
    return os.environ.get("GGUFPY_GRAPHS", "1") not in ("0", "false", "no")


class LaunchRecord:
    """Generic recording: while `fn` runs (really, on the device), every launch, copy and fill is
    also appended to a list; `replay` writes the new inputs into their buffers and re-issues the list."""

    def __init__(self, be):
        self.be, self.ops, self.slots = be, [], {}

    def input(self, slot: str, x: np.ndarray):
        from .array import DArray

        if slot not in self.slots:
            self.slots[slot] = self.be.rt.alloc(max(x.nbytes, 4))
        buf = self.slots[slot]
        self.be.rt.write(buf, x)
        return DArray(self.be, buf, x.shape, np.int32)

    def record(self, fn, reset=None):
        self.be._recording = self.ops
        self.be._staging = self
        try:
            return fn()
        finally:
            self.be._recording = None
            self.be._staging = None

    def replay(self, inputs: dict):
        rt = self.be.rt
        for slot, x in inputs.items():
            rt.write(self.slots[slot], np.ascontiguousarray(x, np.int32))
        for op, args in self.ops:
            op(*args)


class CudaCapture:
    """A CUDA graph of the step (stream capture: recorded, not run), its inputs in page-locked host
    buffers that the graph's copy nodes read at every replay, and the memory pool it owns."""

    def __init__(self, be):
        self.be, self.slots, self.graph, self.pool = be, {}, None, None

    def input(self, slot: str, x: np.ndarray):
        from .array import DArray

        rt = self.be.rt
        if slot not in self.slots:
            self.slots[slot] = (rt.pinned(max(x.nbytes, 8)), rt.alloc(max(x.nbytes, 4)))
        host, dev = self.slots[slot]
        host[: x.nbytes] = x.view(np.uint8).reshape(-1)
        rt.write_pinned(dev, host[: x.nbytes])
        return DArray(self.be, dev, x.shape, np.int32)

    def record(self, fn, reset):
        """Run `fn` once for real with the graph's own memory pool (so that the capture then finds
        every buffer it asks for in that pool: nothing is allocated while capturing), `reset` the
        host state it advanced, then capture it."""
        self.be._staging = self
        try:
            self.graph, out, self.pool = self.be.rt.capture(fn, warm=reset)
        finally:
            self.be._staging = None
        return out

    def replay(self, inputs: dict):
        for slot, x in inputs.items():
            host, _ = self.slots[slot]
            b = np.ascontiguousarray(x, np.int32).view(np.uint8).reshape(-1)
            host[: b.nbytes] = b
        self.be.rt.replay(self.graph)


class StepGraph:
    def __init__(self, capture, out, n_tokens: int):
        self.capture, self.out, self.n_tokens = capture, out, n_tokens


class GraphOps:
    """`decode_graph(model, cache, token)`: the decode step by replay (mixin of DeviceBackend)."""

    _recording = None
    _graph_failed = False

    def _new_capture(self):
        return LaunchRecord(self)

    def decode_graph(self, model, cache, token: int) -> np.ndarray:
        """Logits (1, n_vocab) of `token` at the cache's next position, on the host."""
        with self.lock:
            return self._decode_graph(model, cache, token)

    def _decode_graph(self, model, cache, token: int) -> np.ndarray:
        if not graphs_enabled() or self._graph_failed:
            return self.to_numpy(model.forward([token], cache))
        g = getattr(cache, "step_graph", None)
        n = cache.n_past
        if g is None:
            if not getattr(cache, "step_seen", False):  # first step: plain (builds every kernel it needs)
                cache.step_seen = True
                return self.to_numpy(model.forward([token], cache))
            cap = self._new_capture()
            try:
                out = cap.record(lambda: model.forward([token], cache), reset=lambda: setattr(cache, "n_past", n))
            except KernelError as e:
                if cap.__class__ is LaunchRecord:
                    raise
                self._graph_failed = True  # a capture that fails costs a warning, not the step
                import warnings

                warnings.warn(f"decode steps run without CUDA graphs on {self.device_name}: {e}", RuntimeWarning)
                cache.n_past = n
                return self.to_numpy(model.forward([token], cache))
            g = cache.step_graph = StepGraph(cap, out, 1)
            if isinstance(cap, LaunchRecord):  # it ran while recording: this step is done
                return self.to_numpy(out)
            cache.n_past = n  # a CUDA capture only recorded the step: run it now
        cache.check_room(1)
        g.capture.replay({"tokens": [token], "pos": [n]})
        cache.n_past = n + 1
        return self.to_numpy(g.out)
