"""ggufpy: a pure-Python GGUF inference engine.

    from engine import Engine              # the library API (engine/engine.py)
    from engine import Llama               # llama-cpp-python's `Llama`, on this engine (engine/llama_compat.py)
    from engine import GGUF                # the GGUF reader (engine/gguf_file.py)

Importing `engine` loads NumPy and the GGUF reader only. Every other public name is imported on first
use (module `__getattr__`, PEP 562), and compute backends (numba, cupy, pyopencl) only when a model is
loaded on them, so `import engine` and `python -m engine --help` stay fast.
"""

from __future__ import annotations

import importlib

from .gguf_file import GGUF, GGUFError, open_gguf

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first asked for)
_LAZY = {
    "Engine": ".engine",
    "Completion": ".engine",
    "Piece": ".engine",
    "ContextLengthError": ".engine",
    "Llama": ".llama_compat",
}

__all__ = ["GGUF", "GGUFError", "open_gguf", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
