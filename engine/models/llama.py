"""`llama`: LLaMA 1/2/3, Mistral, SmolLM2, and the Mixtral-style MoE layout of the same architecture.

Follows llama.cpp `src/models/llama.cpp` (shared formats.md §3.3). Q/K rows were permuted by the
converter, so RoPE is the "normal" (adjacent pairs) kind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import DecoderModel, Placement, attend, gated_ffn, moe_ffn


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


class Model(DecoderModel):
    Params = Params

    def __init__(self, gguf: GGUF, backend, place: Placement | None = None):
        super().__init__(gguf, backend, place)
        if self.w.has("rope_freqs"):  # llama 3 frequency factors, per rotated pair
            ff = self.w.raw("rope_freqs.weight").dequantize()
            self.p = replace(self.p, rope=replace(self.p.rope, freq_factors=ff))

    @property
    def moe(self) -> bool:
        return self.p.n_expert > 0

    def load_layer(self, i: int, L) -> None:
        names = ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps") if self.p.n_expert else \
            ("ffn_gate", "ffn_up", "ffn_down")
        for name in ("attn_norm", "attn_output", "ffn_norm", *names):
            getattr(L, name)
        L.get("attn_output_bias")

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        o = attend(be, cache, i, q, k, v, pos, p.rope, scale=1.0 / np.sqrt(p.head_dim))
        h = h + be.matmul(o, L.attn_output, L.get("attn_output_bias"))
        f = be.rms_norm(h, L.ffn_norm, p.rms_eps)
        if self.moe:
            return h + moe_ffn(be, f, L.ffn_gate_inp, L.ffn_gate_exps, L.ffn_up_exps, L.ffn_down_exps, p.n_expert_used)
        return h + gated_ffn(be, f, L.ffn_gate, L.ffn_up, L.ffn_down, gate_up=self.ffn_gate_up[i])
