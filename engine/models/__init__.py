"""Model architectures, one module per `general.architecture`, imported lazily.

Each module defines a frozen `Params` dataclass read from GGUF metadata and a `Model` class with
`Model(gguf, backend)` and `forward(tokens, cache, last_only=True, embeddings=False) -> logits`
(or, with embeddings=True, the output-normed hidden states).
"""

from __future__ import annotations

import importlib

from engine.gguf_file import GGUF

# general.architecture -> module (a registry, not an if-chain)
ARCHITECTURES: dict[str, str] = {
    "llama": "engine.models.llama",
    "gemma3": "engine.models.gemma3",
    "gpt-oss": "engine.models.gpt_oss",
}


class UnsupportedArchitecture(ValueError):
    def __init__(self, arch: str):
        super().__init__(f"architecture {arch!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}")


def model_class(arch: str):
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(arch)
    return importlib.import_module(ARCHITECTURES[arch]).Model


def load_model(gguf: GGUF, backend):
    return model_class(gguf.arch)(gguf, backend)
