"""Processes sharing the kernel cache: numba's index writes made atomic with a file lock.

Numba keeps one index file per jitted function (every signature and closure variant of it) and one
data file per entry, named by the index's count. Saving an entry reads the index, picks the next free
data name, writes the index back, then the data -- with no lock. Two processes saving *different*
entries of one function at the same moment can both pick the same data name: the index then maps
one entry to the other's machine code, and a later process loads the wrong kernel without any error.
That happens whenever processes start on an empty cache together: the compile helpers of a first run
(warm.py), `serve --ray` replicas on one machine, two `run`s.

Here `IndexDataCacheFile.save` holds an exclusive `flock` on `<index>.lock` from reading the index to
writing the data, and `load` a shared one, so an entry is always read as it was written. POSIX only
(elsewhere nothing changes); a patch of a private numba class, checked for at install.
"""

from __future__ import annotations

import contextlib

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextlib.contextmanager
def _locked(path: str, exclusive: bool):
    try:
        f = open(path, "a+b")
    except OSError:  # a read-only cache: nothing is saved there either
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def install() -> bool:
    """Wrap numba's index save and load in the lock (idempotent); whether it is installed."""
    if fcntl is None:
        return False
    try:
        from numba.core.caching import IndexDataCacheFile
        save, load = IndexDataCacheFile.save, IndexDataCacheFile.load
    except (ImportError, AttributeError):
        return False
    if getattr(save, "_locked", False):
        return True

    def locked_save(self, key, data):
        with _locked(self._index_path + ".lock", True):
            return save(self, key, data)

    def locked_load(self, key):
        with _locked(self._index_path + ".lock", False):
            return load(self, key)

    locked_save._locked = locked_load._locked = True
    locked_save.__wrapped__, locked_load.__wrapped__ = save, load
    IndexDataCacheFile.save = locked_save
    IndexDataCacheFile.load = locked_load
    return True
