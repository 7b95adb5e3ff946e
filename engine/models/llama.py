"""`llama`: LLaMA 1/2/3, Mistral, SmolLM2, and the Mixtral-style MoE layout of the same architecture.

Follows llama.cpp `src/models/llama.cpp` (shared formats.md §3.3). Q/K rows were permuted by the
converter, so RoPE is the "normal" (adjacent pairs) kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import KVCache, Pass, Placement, Weights, gated_ffn, moe_ffn


@dataclass(frozen=True)
class Params:
    n_vocab: int
    n_embd: int          # llama.embedding_length
    n_layer: int         # llama.block_count
    n_head: int          # llama.attention.head_count
    n_head_kv: int       # llama.attention.head_count_kv
    head_dim: int        # llama.attention.key_length (default n_embd / n_head)
    n_ctx_train: int     # llama.context_length
    rms_eps: float       # llama.attention.layer_norm_rms_epsilon
    rope: RopeParams     # llama.rope.{dimension_count, freq_base, scaling.*}
    n_expert: int = 0    # llama.expert_count
    n_expert_used: int = 0  # llama.expert_used_count

    @classmethod
    def from_gguf(cls, g: GGUF, prefix: str = "llama") -> "Params":
        k = lambda key, default=None: g.get(f"{prefix}.{key}", default)  # noqa: E731
        n_embd, n_head = int(g.require(f"{prefix}.embedding_length")), int(g.require(f"{prefix}.attention.head_count"))
        head_dim = int(k("attention.key_length", n_embd // n_head))
        return cls(
            n_vocab=g.tensors["token_embd.weight"].ne[1],
            n_embd=n_embd,
            n_layer=int(g.require(f"{prefix}.block_count")),
            n_head=n_head,
            n_head_kv=int(k("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            n_ctx_train=int(k("context_length", 2048)),
            rms_eps=float(k("attention.layer_norm_rms_epsilon", 1e-5)),
            rope=rope_params_from_gguf(g, prefix, n_dims=int(k("rope.dimension_count", head_dim)), mode="normal"),
            n_expert=int(k("expert_count", 0)),
            n_expert_used=int(k("expert_used_count", 0)),
        )


def rope_params_from_gguf(g: GGUF, prefix: str, *, n_dims: int, mode: str, freq_base: float | None = None,
                          freq_factors=None) -> RopeParams:
    """RoPE settings from `{arch}.rope.*` (linear and YaRN scaling as llama.cpp's load_hparams)."""
    k = lambda key, default=None: g.get(f"{prefix}.{key}", default)  # noqa: E731
    factor = float(k("rope.scaling.factor", 0.0) or k("rope.scale_linear", 0.0) or 0.0)
    scaling = k("rope.scaling.type", "linear")
    freq_scale = 1.0 / factor if factor else 1.0
    yarn = scaling == "yarn"
    # llama-context.cpp's yarn_attn_factor is get_mscale(factor) / (1 + 0.1 ln factor) == 1 without a
    # yarn_log_multiplier; the kernel's rope_yarn applies the 1 + 0.1 ln(factor) magnitude itself.
    attn_factor = float(k("rope.scaling.attn_factor", 1.0))
    return RopeParams(
        n_dims=n_dims,
        freq_base=float(freq_base if freq_base is not None else k("rope.freq_base", 10000.0)),
        freq_scale=freq_scale,
        mode=mode,
        ext_factor=float(k("rope.scaling.yarn_ext_factor", 1.0)) if yarn else 0.0,
        attn_factor=attn_factor,
        beta_fast=float(k("rope.scaling.yarn_beta_fast", 32.0)),
        beta_slow=float(k("rope.scaling.yarn_beta_slow", 1.0)),
        n_ctx_orig=int(k("rope.scaling.original_context_length", k("context_length", 0))),
        freq_factors=freq_factors,
    )


class Model:
    def __init__(self, gguf: GGUF, backend, place: Placement | None = None):
        self.p = p = Params.from_gguf(gguf)
        self.place = place or Placement(backend, p.n_layer)
        self.w = w = Weights(gguf, self.place, p.n_layer)
        if w.has("rope_freqs"):  # llama 3 frequency factors, per rotated pair
            ff = w.raw("rope_freqs.weight").dequantize()
            p = self.p = Params(**{**p.__dict__, "rope": RopeParams(**{**p.rope.__dict__, "freq_factors": ff})})
        self.token_embd = w.get("token_embd.weight")
        self.output = w.output if w.has("output") else w.get("token_embd.weight", self.place.output)  # tied head
        self.moe = p.n_expert > 0
        for blk in w.blk:  # prepare every layer's weights now, not on the first token
            for name in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"):
                getattr(blk, name)
            for name in ("attn_q_bias", "attn_k_bias", "attn_v_bias", "attn_output_bias"):
                blk.get(name)
            names = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps") if self.moe else \
                ("ffn_gate", "ffn_up", "ffn_down")
            for name in names:
                getattr(blk, name)
        w.output_norm

    def new_cache(self, n_ctx: int) -> KVCache:
        p = self.p
        return KVCache(self.place, p.n_layer, n_ctx, p.n_head_kv, p.head_dim, p.head_dim)

    def forward(self, tokens, cache: KVCache, last_only: bool = True, embeddings: bool = False):
        """Run `tokens` (n_tok,) at cache positions n_past..; return logits (1 or n_tok, n_vocab), or
        with `embeddings` the output-normed hidden states (llama.cpp's t_embd) instead."""
        p, w = self.p, self.w
        n = len(tokens)
        cache.check_room(n)
        run = Pass(self.place, tokens, cache.n_past)
        be, tok = run.input()
        h = be.get_rows(self.token_embd, tok)                                     # (n, n_embd)
        for i, L in enumerate(w.blk):
            be, h, pos = run.layer(i, h)
            a = be.rms_norm(h, L.attn_norm, p.rms_eps)
            q = be.matmul(a, L.attn_q, L.get("attn_q_bias")).reshape(n, p.n_head, p.head_dim)
            k = be.matmul(a, L.attn_k, L.get("attn_k_bias")).reshape(n, p.n_head_kv, p.head_dim)
            v = be.matmul(a, L.attn_v, L.get("attn_v_bias")).reshape(n, p.n_head_kv, p.head_dim)
            q, k = be.rope(q, pos, p.rope), be.rope(k, pos, p.rope)
            keys, values = cache.store(i, k, v, pos)
            o = be.attention(q, keys, values, pos, scale=1.0 / np.sqrt(p.head_dim))
            h = h + be.matmul(o.reshape(n, p.n_head * p.head_dim), L.attn_output, L.get("attn_output_bias"))
            f = be.rms_norm(h, L.ffn_norm, p.rms_eps)
            if self.moe:
                h = h + moe_ffn(be, f, L.ffn_gate_inp, L.ffn_gate_exps, L.ffn_up_exps, L.ffn_down_exps,
                                p.n_expert_used)
            else:
                h = h + gated_ffn(be, f, L.ffn_gate, L.ffn_up, L.ffn_down)
        cache.n_past += n
        be, h = run.output(h)
        if last_only:
            h = h[-1:]
        h = be.rms_norm(h, w.output_norm, p.rms_eps)
        return h if embeddings else be.matmul(h, self.output)
