"""ggufpy: a pure-Python GGUF inference engine.

Importing `engine` loads NumPy and the GGUF reader only; compute backends (numba, cupy, pyopencl)
are imported when a model is loaded on them.
"""

from .gguf_file import GGUF, GGUFError, open_gguf

__version__ = "0.1.0"
__all__ = ["GGUF", "GGUFError", "open_gguf", "__version__"]
