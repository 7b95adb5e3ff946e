"""Where Numba keeps the compiled kernels: one per-user directory, chosen before any kernel exists.

Every kernel is `cache=True`: compiling them costs ~20 s of CPU on a first run, loading them well
under a second. Numba's default puts the cache in `__pycache__` beside the source, which works for a
source checkout but not for a package installed into a read-only site-packages; its own fallback
(~/.cache/numba) is shared with every other Numba user, and where neither is writable the first
`@njit(cache=True)` raises at import. So the backend picks the directory itself, once, before the
kernel modules are imported (numba reads `config.CACHE_DIR` when a function is decorated):

1. `NUMBA_CACHE_DIR` if the user set it (Numba's own variable; tests point it at an empty folder);
2. else the per-user cache of platformdirs, `<user cache>/ggufpy/kernels` (~/.cache/ggufpy/kernels
   on Linux; `XDG_CACHE_HOME` moves it);
3. else, if that is not writable (a read-only home), `<tmp>/ggufpy-kernels-<uid>`.

Entries are keyed by Numba (source file content hash, Numba and Python versions, CPU name and
features), so one directory serves every checkout, install and machine type; stale entries are
ignored, never loaded. Nothing here imports numba: `import engine` stays light.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ENV = "NUMBA_CACHE_DIR"

_configured: str | None = None


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _user_dir() -> Path:
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "ggufpy" / "kernels"
    return Path(user_cache_dir("ggufpy", appauthor=False)) / "kernels"


def _temp_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"ggufpy-kernels-{uid}"


def choose() -> str | None:
    """The directory the kernels are cached in (see the module doc); None when nothing is writable
    (Numba then tries its own locations)."""
    env = os.environ.get(ENV)
    if env:
        return env
    for candidate in (_user_dir(), _temp_dir()):
        if _writable(candidate):
            return str(candidate)
    return None


def configure() -> str | None:
    """Points Numba's cache at `choose()`'s directory: the environment (for child processes and for a
    numba imported later) and, when numba is already imported, its config. Idempotent; returns the
    directory."""
    global _configured
    if _configured is not None and os.environ.get(ENV) == _configured:
        return _configured
    path = choose()
    if path is None:
        return None
    os.environ[ENV] = path
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:
        numba_config.CACHE_DIR = path
    _configured = path
    return path


__all__ = ["ENV", "choose", "configure"]
