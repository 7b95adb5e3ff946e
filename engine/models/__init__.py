"""Model architectures, one module per `general.architecture`, imported lazily.

Each module defines a frozen `Params` dataclass read from GGUF metadata and a `Model` class with
`Model(gguf, backend, place=None)` (`place`: which backend runs which layer, common.Placement),
`new_cache(n_ctx)` and `forward(tokens, cache, last_only=True, embeddings=False) -> logits` (or, with
embeddings=True, the output-normed hidden states), calling only backend ops. The engine sets
`model.n_ctx` to the context it serves (llama.cpp's n_ctx, which Phi-3's LongRoPE depends on).
"""

from __future__ import annotations

import importlib

from engine.gguf_file import GGUF

# general.architecture -> module (a registry, not an if-chain)
ARCHITECTURES: dict[str, str] = {
    "llama": "engine.models.llama",
    "gemma2": "engine.models.gemma2",
    "gemma3": "engine.models.gemma3",
    "gpt-oss": "engine.models.gpt_oss",
    "phi3": "engine.models.phi3",
    "qwen2": "engine.models.qwen2",
    "qwen3": "engine.models.qwen3",
    "qwen3moe": "engine.models.qwen3moe",
}


class UnsupportedArchitecture(ValueError):
    def __init__(self, arch: str):
        super().__init__(f"architecture {arch!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}")


def model_class(arch: str):
    if arch not in ARCHITECTURES:
        raise UnsupportedArchitecture(arch)
    return importlib.import_module(ARCHITECTURES[arch]).Model


def load_model(gguf: GGUF, backend, n_gpu_layers: int | None = None, host=None):
    """The model of `gguf` on `backend`; with a device backend and `n_gpu_layers` below the layer
    count, the other layers run on `host` (see common.Placement)."""
    from .common import Placement

    cls = model_class(gguf.arch)
    n_layer = int(gguf.require(f"{gguf.arch}.block_count"))
    model = cls(gguf, backend, Placement(backend, n_layer, n_gpu_layers, host))
    lock = getattr(backend, "lock", None)
    if lock is not None:  # a device runs one forward pass at a time (server slots share the model)
        forward = model.forward

        def locked_forward(*args, **kwargs):
            with lock:
                return forward(*args, **kwargs)

        model.forward = locked_forward
    return model
