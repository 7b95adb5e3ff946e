"""The models a server offers: aliases, lazy loading, slots, least-recently-used unloading.

A model is loaded on its first request (in a worker thread, so the event loop and /health keep
answering) as `parallel` slots: Engines over one model (its weights loaded once), each with its region
of the KV pool (n_ctx / parallel positions, as llama-server divides -c), all stepping together in one
BatchScheduler (engine/batching.py: continuous batching). A request takes the free slot that holds the
longest prefix of its prompt (slots.py) or waits in the queue.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.batching import batched_slots

from .slots import SlotPool


@dataclass
class ModelSpec:
    path: str
    alias: str
    n_ctx: int = 4096
    parallel: int = 1
    n_threads: int | None = None
    chat_format: str | None = None      # a named template instead of the model's own
    pull: str = "missing"               # `path` may be a ref (hf://, ollama://, ...): pulled on first load
    file: str | None = None             # the GGUF that `path` resolved to, once loaded
    backend: str = "auto"               # where it runs (engine.backends): auto, cuda, rocm, opencl, cpu, numpy
    n_gpu_layers: int | None = None     # llama.cpp's -ngl / n_gpu_layers (None: all layers)
    device: int | None = None           # GPU index
    n_batch: int = 512                  # tokens a batched step takes at most (llama.cpp's -b)
    batching: str = "exact"             # "exact": batch invariant; "fast": one product per step (engine/batching.py)
    mmap: bool | None = None            # llama.cpp's --mmap/--no-mmap (config: use_mmap); None: Engine.load decides

    @classmethod
    def from_config(cls, entry: dict, defaults: dict) -> "ModelSpec":
        """One entry of llama-cpp-python's server config (`models: [{model, model_alias, ...}]`)."""
        if "model" not in entry:
            raise ValueError(f"config model entry without 'model': {entry}")
        path = str(entry["model"])
        return cls(path=path, alias=str(entry.get("model_alias") or Path(path).name),
                   n_ctx=int(entry.get("n_ctx", defaults.get("n_ctx", 4096))),
                   parallel=int(entry.get("parallel", defaults.get("parallel", 1))),
                   n_threads=entry.get("n_threads", defaults.get("n_threads")),
                   chat_format=entry.get("chat_format"), pull=str(entry.get("pull", defaults.get("pull", "missing"))),
                   backend=str(entry.get("backend", defaults.get("backend", "auto"))),
                   n_gpu_layers=entry.get("n_gpu_layers", defaults.get("n_gpu_layers")),
                   device=entry.get("main_gpu", defaults.get("device")),
                   n_batch=int(entry.get("n_batch", defaults.get("n_batch", 512))),
                   batching=_batching(entry.get("batching", defaults.get("batching", "exact"))),
                   mmap=_mmap(entry.get("use_mmap", defaults.get("mmap"))))


def _mmap(value) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"use_mmap must be true or false, not {value!r}")
    return value


def _batching(mode) -> str:
    if mode not in ("exact", "fast"):
        raise ValueError(f"batching must be 'exact' or 'fast', not {mode!r}")
    return mode


class UnknownModel(KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.name, self.known = name, known

    def __str__(self) -> str:
        return f"model {self.name!r} not found; available: {', '.join(self.known)}"


@dataclass
class LoadedModel:
    spec: ModelSpec
    engines: list
    free: "SlotPool"
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0      # requests holding a slot
    waiting: int = 0     # requests queued for one

    @property
    def engine(self):
        return self.engines[0]


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], memory_budget: int | None = None):
        if not specs:
            raise ValueError("no model to serve")
        self.specs = {s.alias: s for s in specs}
        self.default = specs[0].alias
        self.loaded: dict[str, LoadedModel] = {}
        self.loading: set[str] = set()
        self.memory_budget = memory_budget
        self.load_error: Exception | None = None  # a start-up load that failed (reported by /health)
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        return list(self.specs)

    def spec(self, name: str | None) -> ModelSpec:
        key = name or self.default
        if key not in self.specs:
            # clients often send the file name or path instead of the alias
            by_path = {Path(s.path).name: s for s in self.specs.values()} | {s.path: s for s in self.specs.values()}
            if key in by_path:
                return by_path[key]
            raise UnknownModel(key, self.names())
        return self.specs[key]

    async def get(self, name: str | None) -> LoadedModel:
        spec = self.spec(name)
        lock = self._locks.setdefault(spec.alias, asyncio.Lock())
        async with lock:
            if spec.alias not in self.loaded:
                self.loading.add(spec.alias)
                try:
                    engines = await asyncio.to_thread(self._load, spec)
                finally:
                    self.loading.discard(spec.alias)
                self._install(spec, engines)
                self._evict(keep=spec.alias)
        m = self.loaded[spec.alias]
        m.last_used = time.monotonic()
        return m

    def _install(self, spec: ModelSpec, engines: list):
        """Make loaded engines the model's slots (on the event loop)."""
        self.loaded[spec.alias] = LoadedModel(spec, engines, SlotPool(engines))

    @staticmethod
    def _load(spec: ModelSpec) -> list:
        from engine.engine import Engine

        from engine.store import resolve_model

        spec.file = str(resolve_model(spec.path, pull=spec.pull))
        first = Engine.load(spec.file, n_ctx=spec.n_ctx, n_threads=spec.n_threads or os.cpu_count(),
                            backend=spec.backend, n_gpu_layers=spec.n_gpu_layers, device=spec.device, mmap=spec.mmap)
        return batched_slots(first, spec.parallel, spec.n_batch, exact=spec.batching == "exact")

    def _unload(self, alias: str):
        m = self.loaded.pop(alias)
        sched = getattr(m.engine.cache, "scheduler", None)
        if sched is not None:
            sched.close()

    def _evict(self, keep: str):
        """Unload least recently used models (not busy, not `keep`) while over the memory budget."""
        if not self.memory_budget:
            return
        while self._resident() > self.memory_budget:
            idle = [m for a, m in self.loaded.items() if a != keep and m.active == 0]
            if not idle:
                return
            victim = min(idle, key=lambda m: m.last_used)
            self._unload(victim.spec.alias)

    def _resident(self) -> int:
        return sum(Path(m.spec.file or m.spec.path).stat().st_size for m in self.loaded.values())

    def warm(self, name: str | None = None):
        """Load a model now, in a background thread of its own (the server's start-up load)."""
        spec = self.spec(name)
        self.loading.add(spec.alias)

        def run(loop):
            try:
                engines = self._load(spec)
            except Exception as e:  # reported by /health and the first request
                self.load_error = e
                self.loading.discard(spec.alias)
                return

            def install():
                self._install(spec, engines)
                self.loading.discard(spec.alias)

            loop.call_soon_threadsafe(install)

        threading.Thread(target=run, args=(asyncio.get_running_loop(),), daemon=True).start()
