"""One thread runs the Numba backend's forward passes in a process.

Numba's parallel kernels run on GNU OpenMP here (its `omp` threading layer), and libgomp keeps a pool
of worker threads *per calling thread*. Once more OpenMP threads are alive than the machine has CPUs
(a second thread that has run one parallel kernel is enough on 2 cores: its pool stays), libgomp
throttles every pool's spin-wait between parallel regions to ~100 spins, and each of a decode
token's ~200 regions then wakes sleeping workers: measured 112 -> 53 tokens/s on SmolLM2 with one
idle executor thread alive. A web app calling `Engine.chat` from a thread pool, a batch scheduler
beside direct calls, a library user's own threads: each would have halved every forward pass.

So every forward pass (models/common.py `DecoderModel.forward`) runs on one process-wide thread,
"numba-compute": `run(fn, ...)` hands the call over and waits for it (~20-60 us a pass, against a
decode token's ~8 ms), or calls it directly when already on that thread. The answer comes back through
a SimpleQueue, C code end to end: a Future's Python (its condition, its state) ran cold after every
pass, when a forward pass has left the caches holding weights (~30 us more a token). The backend
operations that start parallel kernels (products, attention, the activations) are `pinned` too, for callers of the
backend itself (tests, tools): from the compute thread they run directly, from any other they are
handed over. Exceptions come back to the caller as they were raised.
"""

from __future__ import annotations

import functools
import queue
import threading

_lock = threading.Lock()
_thread: threading.Thread | None = None
_ident: int | None = None  # the compute thread's get_ident()
_work: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()


def _loop() -> None:
    global _ident
    _ident = threading.get_ident()
    while True:
        fn, args, kwargs, reply = _work.get()
        try:
            reply.put((True, fn(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - handed back to the caller, whatever it is
            reply.put((False, e))
        del fn, args, kwargs, reply


def _start() -> threading.Thread:
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="numba-compute", daemon=True)
            _thread.start()
        return _thread


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the compute thread; its result, or its exception raised here."""
    t = _thread
    if t is threading.current_thread():
        return fn(*args, **kwargs)
    if t is None or not t.is_alive():
        _start()
    reply: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
    _work.put((fn, args, kwargs, reply))
    ok, value = reply.get()
    if ok:
        return value
    try:
        raise value
    finally:
        del value  # (no reference cycle through the traceback)


def current() -> bool:
    """Whether the calling thread is the compute thread."""
    return _thread is threading.current_thread()


def pinned(method):
    """A backend method that runs parallel kernels: called on the compute thread, wherever it is called."""
    @functools.wraps(method)
    def call(*args, **kwargs):
        if _ident == threading.get_ident():  # (a C call; current_thread() costs ~0.2 us of ~300 calls a token)
            return method(*args, **kwargs)
        return run(method, *args, **kwargs)

    return call
