"""Model files that change while they are served: errors for the requests, never a crash.

Weights are read straight from a memory map of the GGUF. Deleting the file is harmless (the map keeps
the inode alive, requests go on), but truncating or rewriting it in place makes every later read of a
page past the new end a SIGBUS, which kills the process: all models, all clients. llama.cpp has the
same exposure.

So while a model is served, each of its files is open here with a Linux read *lease* (fcntl
F_SETLEASE): a process that opens the file for writing or truncates it is held by the kernel (up to
/proc/sys/fs/lease-break-time, 45 s by default) and this process gets SIGIO first. Then the model is
taken out of service: requests waiting for it get 503 "model file changed", running generations are
cancelled (their streams end with an error), the registry forgets the model, and once no thread reads
the map any more the lease is let go and the writer proceeds. The next request loads the file afresh,
or gets the load's error (a truncated file: GGUFError, 500).

Where a lease cannot be had (another OS, a file we do not own without CAP_LEASE, a file already open
for writing, a network filesystem), each request compares the file's size with the size at load, which
catches a truncation between requests but not one during a generation.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import weakref
from dataclasses import dataclass, field

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None

_LEASE = fcntl is not None and hasattr(fcntl, "F_SETLEASE")


class ModelFileChanged(Exception):
    """A served model's file was truncated or is being rewritten (answered 503)."""


@dataclass
class _Held:
    alias: str
    files: list[tuple[int, str, int]]           # (fd, path, size at load)
    leased: bool = False
    broken: bool = False
    jobs: weakref.WeakSet = field(default_factory=weakref.WeakSet)


class ModelFileGuard:
    def __init__(self, registry):
        self.registry = registry
        self.held: dict[int, tuple[object, _Held]] = {}  # id(LoadedModel) -> (model, what is held)
        self.leases = False
        self.loop = None

    def start(self):
        """On the event loop at start-up: take SIGIO (lease breaks) there. Without it, no leases."""
        self.loop = asyncio.get_running_loop()
        if not _LEASE:
            return
        try:
            self.loop.add_signal_handler(signal.SIGIO, self._on_lease_break)
            self.leases = True
        except (NotImplementedError, RuntimeError, ValueError):
            self.leases = False  # not the main thread (a test client): size checks only

    # --- per request

    def hold(self, m, job=None):
        """Before a request uses model `m`: hold its files (first time), refuse it if they changed,
        remember `job` so that a change can cancel it."""
        entry = self.held.get(id(m))
        if entry is None or entry[0] is not m:
            self._prune()
            entry = self.held[id(m)] = (m, self._open(m))
        h = entry[1]
        self._check(h)
        if job is not None:
            h.jobs.add(job)

    def check(self, m):
        """The same test from a worker thread, just before generation touches the weights."""
        entry = self.held.get(id(m))
        if entry is not None and entry[0] is m:
            self._check(entry[1])

    def _check(self, h: _Held):
        if not h.broken:
            for fd, path, size in h.files:
                try:
                    now = os.fstat(fd).st_size
                except OSError:
                    now = -1
                if now < size:
                    h.broken = True
        if h.broken:
            raise ModelFileChanged(f"the file of model {h.alias!r} was changed or truncated while it was served; "
                                   "it is reloaded on a later request")

    # --- holding files

    def _open(self, m) -> _Held:
        parts = getattr(getattr(m.engine, "gguf", None), "parts", None) or []
        files = []
        for part in parts:
            try:
                fd = os.open(part.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue  # deleted already: the map still serves it
            files.append((fd, str(part.path), len(part.buffer)))
        h = _Held(m.spec.alias, files)
        if self.leases and files:
            try:
                for fd, _, _ in files:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                h.leased = True
            except OSError:  # not our file, open for writing elsewhere, a filesystem without leases
                self._unlease(h)
        return h

    def _unlease(self, h: _Held):
        for fd, _, _ in h.files:
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            except OSError:
                pass
        h.leased = False

    def _release(self, h: _Held):
        if h.leased:
            self._unlease(h)
        for fd, _, _ in h.files:
            try:
                os.close(fd)
            except OSError:
                pass
        h.files = []

    def _prune(self):
        """Let go of the files of models the registry no longer holds (unloaded) once idle."""
        for key, (m, h) in list(self.held.items()):
            if self.registry.loaded.get(m.spec.alias) is not m and not getattr(m, "active", 0) and not len(h.jobs):
                self._release(h)
                del self.held[key]

    # --- a writer is waiting

    def _on_lease_break(self):
        for key, (m, h) in list(self.held.items()):
            if not h.leased or h.broken:
                continue
            breaking = False
            for fd, _, _ in h.files:
                try:
                    breaking |= fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK
                except OSError:
                    breaking = True
            if breaking:
                h.broken = True
                self.loop.create_task(self._retire(key, m, h))

    async def _retire(self, key, m, h: _Held, patience: float = 30.0):
        """Take model `m` out of service, wait until nothing reads its map, then let the writer go."""
        if self.registry.loaded.get(m.spec.alias) is m:
            del self.registry.loaded[m.spec.alias]
        for job in list(h.jobs):
            job.cancel.set()
            job.put(ModelFileChanged(
                f"the file of model {h.alias!r} is being changed on disk: this generation was stopped"))
        end = time.monotonic() + patience  # under the kernel's lease-break-time (45 s)
        while getattr(m, "active", 0) and time.monotonic() < end:  # workers leave their slot when done
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # a request's preparation (tokenizer) finishing its last read
        self._release(h)  # the entry stays, broken, until the model is gone: later requests get the 503
