"""The backend protocol: the few operations a model's forward pass needs.

A model never imports a backend; it calls these methods on whatever backend the engine picked.
Arrays are backend arrays (NumPy for the CPU backends, `kernels.gpu.array.DArray` on the devices,
which supports `+`, `*`, `/ scalar`, `reshape` and row slices as kernels); `to_numpy` brings one back. Shapes follow ggml's conventions, written NumPy-style:

    x:       (n_tok, n_in)  float32 activations (a 1-D (n_in,) vector is accepted for decode)
    weight:  QTensor (n_out, n_in) in GGML block layout, as `upload` returned it
    experts: QTensor (n_expert, n_out, n_in); `ids` (n_tok, n_used) int32 picks experts per token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class RopeParams:
    """Rotary embedding as ggml_rope_ext computes it (see shared formats.md §3.2).

    mode "normal" rotates adjacent pairs (x[2i], x[2i+1]) (llama); "neox" rotates (x[i], x[i+n/2])
    (gemma, gpt-oss, qwen). The YaRN fields are inert at their defaults (ext_factor 0, attn_factor 1).
    """

    n_dims: int                 # rotated dimensions per head (<= head_dim)
    freq_base: float = 10000.0
    freq_scale: float = 1.0     # 1 / rope.scaling.factor for linear / YaRN scaling
    mode: str = "normal"        # "normal" | "neox"
    ext_factor: float = 0.0     # YaRN extrapolation mix (1.0 when YaRN is on)
    attn_factor: float = 1.0    # YaRN magnitude scale
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0         # rope.scaling.original_context_length
    freq_factors: np.ndarray | None = None  # (n_dims/2,) f32 `rope_freqs` (llama 3), divides theta


@runtime_checkable
class Backend(Protocol):
    name: str
    n_threads: int

    # --- weights and transfers
    def upload(self, t) -> Any: ...
    def asarray(self, x: np.ndarray) -> Any: ...
    def to_numpy(self, x) -> np.ndarray: ...

    def ints(self, x, slot: str | None = None) -> Any: ...  # int32 inputs (token ids, positions); see kernels/gpu/graphs.py

    # --- products with quantized weights (y = x @ W.T [+ bias]). `path` groups the tokens of a batched
    # pass (engine/batching.py): "rows" for decode tokens, "tiles" for prompt tokens, None as the size
    # suggests; where `batch_invariant` is True a fixed path gives each row exactly what it gives alone.
    batch_invariant: bool
    # True where one product over stacked weights (engine/models/common.py Weights.stacked: Q/K/V,
    # gate/up) is cheaper than one per weight and the caller may slice the result's columns on the host
    fuses_products: bool
    def matmul(self, x, w, bias=None, path=None) -> Any: ...  # (n_tok, n_in) x (n_out, n_in) -> (n_tok, n_out)
    def matmul_experts(self, x, w, ids, bias=None, path=None) -> Any: ...  # -> (n_tok, n_used, n_out)
    def concat_rows(self, parts) -> Any: ...                 # stacked along the first axis
    def get_rows(self, w, ids) -> Any: ...                  # embedding lookup -> (len(ids), n_in) f32

    # --- KV cache: rows are positions; the device backends write in place from device positions
    def new_kv(self, n_ctx: int, n_head_kv: int, head_dim: int) -> Any: ...
    def kv_store(self, cache, x, pos) -> Any: ...           # returns what attention may read
    # True where several sequences may share one pooled cache (engine/batching.py): `kv_scatter` writes a
    # batch's rows anywhere in it and attention's `spans` give each query token its sequence's rows
    attention_spans: bool
    def kv_scatter(self, cache, x, rows) -> None: ...       # (only where attention_spans)

    # --- mixture of experts, routed where the activations live (ids never visit the host on a GPU)
    def moe_route(self, logits, n_used: int, gating: str = "softmax", norm: bool = True) -> tuple: ...
    def moe_combine(self, d, weights) -> Any: ...           # (n_tok, n_used, n) x (n_tok, n_used) -> (n_tok, n)

    # --- elementwise and attention
    def rms_norm(self, x, weight, eps: float) -> Any: ...   # weight None: plain normalisation
    def rope(self, x, positions, p: RopeParams) -> Any: ... # x (n_tok, n_head, head_dim)
    def softmax(self, x) -> Any: ...                        # over the last axis
    def silu(self, x) -> Any: ...
    def gelu(self, x) -> Any: ...                           # tanh approximation, as ggml_gelu
    def swiglu(self, gate, up) -> Any: ...                  # silu(gate) * up
    def geglu(self, gate, up) -> Any: ...                   # gelu(gate) * up
    def swiglu_oai(self, gate, up, alpha: float, limit: float) -> Any: ...  # gpt-oss's clamped SwiGLU
    def softcap(self, x, cap: float) -> Any: ...            # tanh(x / cap) * cap
    def attention(self, q, k, v, q_pos, *, scale: float, window: int = 0, sinks=None, kv_pos=None,
                  softcap: float = 0.0, spans=None) -> Any: ...  # softcap: Gemma 2's cap*tanh(q.k/cap);
    # spans (lo, hi): token t attends over cache rows lo[t]..hi[t]-1 only (where attention_spans)


ACTIVATION_MODES = {
    "llama.cpp": "round activations to the weight type's vec_dot type first, as llama.cpp's CPU does",
    "f32": "exact float32 products",
}


def check_activations(mode: str) -> str:
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"unknown activations mode {mode!r}; known: {', '.join(ACTIVATION_MODES)}")
    return mode


class KernelError(RuntimeError):
    """A backend could not run an operation (unsupported type on that backend, failed kernel build)."""
