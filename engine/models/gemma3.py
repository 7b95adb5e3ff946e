"""`gemma3`: Gemma 3 text models (270M .. 27B).

Follows llama.cpp `src/models/gemma3.cpp` (shared formats.md §3.5): embeddings scaled by sqrt(n_embd),
per-head RMSNorm of Q and K, norms before *and* after attention and FFN, GeGLU (tanh GELU), sliding-
window layers (5 of every 6) with their own RoPE base, NeoX RoPE, tied output. The GGUF norm weights
already hold HF's (1 + w), so every norm is a plain `rms_norm(x) * w`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import DecoderModel, attend, gated_ffn, swa_layers_from_gguf
from .llama import rope_params_from_gguf


@dataclass(frozen=True)
class Params:
    n_vocab: int
    n_embd: int             # gemma3.embedding_length
    n_layer: int            # gemma3.block_count
    n_head: int             # gemma3.attention.head_count
    n_head_kv: int          # gemma3.attention.head_count_kv
    head_dim: int           # gemma3.attention.key_length
    n_ctx_train: int        # gemma3.context_length
    rms_eps: float          # gemma3.attention.layer_norm_rms_epsilon
    n_swa: int              # gemma3.attention.sliding_window (0: every layer global)
    swa_layers: tuple[bool, ...]  # gemma3.attention.sliding_window_pattern (default period 6)
    rope_global: RopeParams  # gemma3.rope.freq_base (+ rope.scaling.* on the global layers only)
    rope_local: RopeParams   # gemma3.rope.freq_base_swa (default 10000, never scaled)
    attn_scale: float       # 1/sqrt(query_pre_attn_scalar), as llama.cpp hard-codes it per size
    final_softcap: float    # gemma3.final_logit_softcapping (0: none)

    @classmethod
    def from_gguf(cls, g: GGUF) -> "Params":
        k = lambda key, default=None: g.get(f"gemma3.{key}", default)  # noqa: E731
        n_embd, n_head = int(g.require("gemma3.embedding_length")), int(g.require("gemma3.attention.head_count"))
        n_layer = int(g.require("gemma3.block_count"))
        head_dim = int(k("attention.key_length", n_embd // n_head))
        n_swa = int(k("attention.sliding_window", 0))
        swa_layers = swa_layers_from_gguf(g, "gemma3", n_layer, n_swa, default_period=6)
        n_rot = int(k("rope.dimension_count", head_dim))
        rope_global = rope_params_from_gguf(g, "gemma3", n_dims=n_rot, mode="neox")
        rope_local = RopeParams(n_dims=n_rot, freq_base=float(k("rope.freq_base_swa", 10000.0)), mode="neox")
        # llama.cpp: 27B (62 layers) uses n_embd/n_head as query_pre_attn_scalar, the others head_dim
        attn_scale = 1.0 / np.sqrt(n_embd / n_head if n_layer == 62 else head_dim)
        return cls(
            n_vocab=g.tensors["token_embd.weight"].ne[1], n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            n_head_kv=int(k("attention.head_count_kv", n_head)), head_dim=head_dim,
            n_ctx_train=int(k("context_length", 32768)), rms_eps=float(k("attention.layer_norm_rms_epsilon", 1e-6)),
            n_swa=n_swa, swa_layers=swa_layers, rope_global=rope_global, rope_local=rope_local,
            attn_scale=float(attn_scale), final_softcap=float(k("final_logit_softcapping", 0.0) or 0.0),
        )


class Model(DecoderModel):
    Params = Params

    def load_layer(self, i: int, L) -> None:
        for name in ("attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm",
                     "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"):
            getattr(L, name)

    def embed(self, be, tok):
        return be.get_rows(self.token_embd, tok) * np.float32(np.sqrt(self.p.n_embd))

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        local = p.swa_layers[i]
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        q, k = be.rms_norm(q, L.attn_q_norm, p.rms_eps), be.rms_norm(k, L.attn_k_norm, p.rms_eps)
        o = attend(be, cache, i, q, k, v, pos, p.rope_local if local else p.rope_global, scale=1.0,
                   q_scale=p.attn_scale, window=p.n_swa if local else 0)
        h = h + be.rms_norm(be.matmul(o, L.attn_output), L.post_attention_norm, p.rms_eps)
        f = gated_ffn(be, be.rms_norm(h, L.ffn_norm, p.rms_eps), L.ffn_gate, L.ffn_up, L.ffn_down, "geglu",
                      gate_up=self.ffn_gate_up[i])
        return h + be.rms_norm(f, L.post_ffw_norm, p.rms_eps)

    def logits(self, be, h):
        logits = super().logits(be, h)
        return be.softcap(logits, self.p.final_softcap) if self.p.final_softcap else logits
