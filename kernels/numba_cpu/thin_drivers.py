"""Thin drivers: compile the loops that only hand work items to compiled kernels without re-optimizing
the kernels inside them.

Numba builds every compiled function as an LLVM module of its own, links into it the finished modules
of everything it calls, and runs the full -O3 module pipeline over the result before emitting machine
code. So a kernel is optimized once in its own module and again in each caller's -- and a `prange`
driver is four modules deep (the loop body's gufunc, two wrappers around it, the function itself):
the attention kernel's code went through -O3 five times, 0.3-0.4 s each, for a 2.6 s compile of a
driver whose own code is a loop and a call. That re-optimization was most of a first run's
compile time (see `benchmarks/cold_start.py`).

A function registered here with `thin` keeps the -O3 kernels it calls exactly as they were built (their
machine code comes from their own optimized IR either way) but its own modules -- and the parfor
layers numba makes for its `prange` loop -- get only numba's cheap pass (-O0 with the reference-count
pruning), not the full pipeline. Only driver glue is affected: a loop over work items and a call per
item. Kernels compiled while a thin driver is being compiled (its callees, on their first use) are
not thin: the listener below tells them apart by which function is compiling.

This patches a private numba method (`CPUCodeLibrary._optimize_final_module`); with a numba that lacks
it, nothing changes but the compile time.
"""

from __future__ import annotations

import threading

from numba.core import event

_THIN: set[str] = set()
_state = threading.local()
_PARFOR_LAYERS = ("__numba_parfor_gufunc", "<numba.np.ufunc.wrappers._GufuncWrapper", "parallelgufuncwrapper")


def thin(dispatcher):
    """Mark a jitted driver thin (see the module doc); returns it, so it can be used as a decorator
    below `@njit`."""
    _THIN.add(dispatcher.py_func.__qualname__)
    return dispatcher


def _stack() -> list:
    s = getattr(_state, "stack", None)
    if s is None:
        s = _state.stack = []
    return s


class _Compiling(event.Listener):
    """Which dispatcher is compiling in this thread (numba compiles callees nested inside callers)."""

    def on_start(self, ev):
        d = ev.data.get("dispatcher")
        _stack().append(getattr(getattr(d, "py_func", None), "__qualname__", None))

    def on_end(self, ev):
        s = _stack()
        if s:
            s.pop()


def _light(library) -> bool:
    s = _stack()
    if not s or s[-1] not in _THIN:
        return False
    name = library.name
    return name == s[-1] or name.startswith(_PARFOR_LAYERS)


def _install() -> None:
    try:
        from numba.core import config
        from numba.core.codegen import CPUCodegen, CPUCodeLibrary, remove_redundant_nrt_refct
        full = CPUCodeLibrary._optimize_final_module
        CPUCodegen._module_pass_manager  # noqa: B018 - what the cheap pass is made with
    except (ImportError, AttributeError):  # pragma: no cover - another numba: full optimization everywhere
        return
    if getattr(full, "_thin_drivers", False):
        return

    def optimize_final_module(self):
        if not _light(self):
            return full(self)
        pm, pb = self._codegen._module_pass_manager(loop_vectorize=False, slp_vectorize=False, opt=0, cost="cheap")
        pm.run(self._final_module, pb)
        if not config.LLVM_REFPRUNE_PASS:
            self._final_module = remove_redundant_nrt_refct(self._final_module)

    optimize_final_module._thin_drivers = True
    CPUCodeLibrary._optimize_final_module = optimize_final_module
    event.register("numba:compile", _Compiling())


_install()
