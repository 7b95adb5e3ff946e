"""Pieces every architecture shares: GGUF tensors by name, the KV cache, FFN blocks.

Tensors are reached by their GGUF names (tinygrad style), so loading needs no name-mapping table:
`w.blk[3].attn_q` is `blk.3.attn_q.weight`, `w.blk[3].attn_q_bias` is `blk.3.attn_q.bias`.
`Weights.unused()` lists what a model never touched, which a test uses to prove nothing was skipped.
"""

from __future__ import annotations

import numpy as np

from engine.gguf_file import GGUF, GGUFError
from quant import GGMLType

# GGML types kept as plain float vectors (norm weights, biases, sinks): everything else is a matrix
_VECTOR_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


class _Tensors:
    """Attribute access to the tensors under one prefix (`""` or `"blk.3."`)."""

    def __init__(self, weights: "Weights", prefix: str):
        self._w, self._prefix = weights, prefix

    def _name(self, attr: str) -> str:
        return f"{self._prefix}{attr[:-5]}.bias" if attr.endswith("_bias") else f"{self._prefix}{attr}.weight"

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        return self._w.get(self._name(attr))

    def has(self, attr: str) -> bool:
        return self._name(attr) in self._w.gguf.tensors

    def get(self, attr: str, default=None):
        return getattr(self, attr) if self.has(attr) else default


class Weights(_Tensors):
    """A model's tensors on a backend: matrices stay quantized (`backend.upload`), 1-D and
    small float tensors become float32 backend arrays. Each tensor is prepared once."""

    def __init__(self, gguf: GGUF, backend, n_layer: int):
        self.gguf, self.backend, self._cache, self._used = gguf, backend, {}, set()
        super().__init__(self, "")
        self.blk = [_Tensors(self, f"blk.{i}.") for i in range(n_layer)]

    def get(self, name: str):
        if name not in self._cache:
            info = self.gguf.tensors.get(name)
            if info is None:
                raise GGUFError(self.gguf.path, f"missing tensor {name!r}")
            t = info.load()
            if len(t.shape) == 1 and t.qtype in _VECTOR_TYPES:
                self._cache[name] = self.backend.asarray(t.dequantize())
            else:
                self._cache[name] = self.backend.upload(t)
            self._used.add(name)
        return self._cache[name]

    def raw(self, name: str):
        """The QTensor itself (e.g. the embedding table for `get_rows`)."""
        self._used.add(name)
        return self.gguf.tensor(name)

    def unused(self) -> set[str]:
        return set(self.gguf.tensors) - self._used


class KVCache:
    """Keys and values of every layer, for positions 0..n_ctx-1.

    k[l], v[l]: (n_ctx, n_head_kv, head_dim) float32 backend arrays. `n_past` counts the positions
    filled; a forward pass writes its tokens at n_past.. and then advances it.
    """

    def __init__(self, backend, n_layer: int, n_ctx: int, n_head_kv: int, head_dim_k: int, head_dim_v: int):
        self.n_ctx, self.n_past = n_ctx, 0
        self._round = getattr(backend, "round_kv", None)
        zeros = lambda d: backend.asarray(np.zeros((n_ctx, n_head_kv, d), np.float32))  # noqa: E731
        self.k = [zeros(head_dim_k) for _ in range(n_layer)]
        self.v = [zeros(head_dim_v) for _ in range(n_layer)]

    def check_room(self, n_new: int):
        if self.n_past + n_new > self.n_ctx:
            raise ContextFull(self.n_past, n_new, self.n_ctx)

    def store(self, layer: int, k, v):
        """Write this step's k, v (n_tok, n_head_kv, d) at n_past; return all keys/values so far."""
        end = self.n_past + k.shape[0]
        if self._round is not None:
            k, v = self._round(k), self._round(v)
        self.k[layer][self.n_past:end] = k
        self.v[layer][self.n_past:end] = v
        return self.k[layer][:end], self.v[layer][:end]

    def truncate(self, n: int):
        """Forget positions >= n (prefix reuse: keep a shared prompt prefix, recompute the rest)."""
        self.n_past = min(self.n_past, n)


class ContextFull(ValueError):
    def __init__(self, n_past: int, n_new: int, n_ctx: int):
        super().__init__(f"context is full: {n_past} tokens in the cache + {n_new} new > n_ctx {n_ctx}")


def swa_layers_from_gguf(g: GGUF, prefix: str, n_layer: int, n_swa: int, default_period: int) -> tuple[bool, ...]:
    """Which layers use the sliding window: `{prefix}.attention.sliding_window_pattern` as per-layer
    bools or a period n (llama_hparams::set_swa_pattern: layer il is windowed iff il % n < n - 1)."""
    pattern = g.get(f"{prefix}.attention.sliding_window_pattern", default_period)
    if isinstance(pattern, (list, tuple, np.ndarray)):
        return tuple(bool(x) for x in pattern)[:n_layer]
    period = int(pattern)
    return tuple(n_swa > 0 and (period == 0 or il % period < period - 1) for il in range(n_layer))


def gated_ffn(be, x, gate, up, down, act):
    """down(act(gate x) * up x): SwiGLU with act=silu, GeGLU with act=gelu (llama.cpp LLM_FFN_PAR)."""
    return be.matmul(act(be.matmul(x, gate)) * be.matmul(x, up), down)


def moe_ffn(be, x, router, gate_exps, up_exps, down_exps, n_used: int, act):
    """Mixtral-style experts: softmax over all router logits, top-k, renormalised weights
    (llama.cpp build_moe_ffn with norm_w), sum of the chosen experts' gated FFNs.
    x: (n_tok, n_embd) -> (n_tok, n_embd). Only the chosen experts' weights are read."""
    probs = be.to_numpy(be.softmax(be.matmul(x, router)))             # (n_tok, n_expert)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :n_used].astype(np.int32)
    w = np.take_along_axis(probs, ids, axis=-1)
    w = (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)      # (n_tok, n_used)
    g = be.matmul_experts(x, gate_exps, ids)                         # (n_tok, n_used, n_ff)
    u = be.matmul_experts(x, up_exps, ids)
    d = be.matmul_experts(act(g) * u, down_exps, ids)                # (n_tok, n_used, n_embd)
    return (d * be.asarray(w)[:, :, None]).sum(axis=1)
