"""`gpt-oss`: OpenAI's gpt-oss-20b / gpt-oss-120b (mixture of experts, MXFP4 experts).

Follows llama.cpp `src/models/openai-moe.cpp` and OpenAI's reference `gpt_oss/torch/model.py`:
- attention with biases on Q/K/V/O, a learned per-head sink logit in the softmax (`attn_sinks`),
  scale 1/sqrt(head_dim), NeoX RoPE with YaRN scaling (`rope.scaling.*`);
- sliding-window and full attention alternating by layer (even layers windowed, period 2, unless
  `attention.sliding_window_pattern` says otherwise);
- RMSNorm before attention and after it (`post_attention_norm`, which feeds the experts);
- a router with bias choosing top-k experts by raw logit, softmax over the chosen logits only;
- experts with biases and gpt-oss's clamped SwiGLU: `min(g, 7) * sigmoid(1.702 min(g, 7)) *
  (clamp(u, -7, 7) + 1)`. Only the chosen experts' bytes are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import DecoderModel, attend, swa_layers_from_gguf
from .llama import rope_params_from_gguf

ARCH = "gpt-oss"
SWIGLU_ALPHA = 1.702   # llama.cpp LLM_FFN_SWIGLU_OAI_MOE constants (the reference model's too)
SWIGLU_LIMIT = 7.0


@dataclass(frozen=True)
class Params:
    n_vocab: int
    n_embd: int              # gpt-oss.embedding_length
    n_layer: int             # gpt-oss.block_count
    n_head: int              # gpt-oss.attention.head_count
    n_head_kv: int           # gpt-oss.attention.head_count_kv
    head_dim: int            # gpt-oss.attention.key_length
    n_ctx_train: int         # gpt-oss.context_length
    rms_eps: float           # gpt-oss.attention.layer_norm_rms_epsilon
    n_swa: int               # gpt-oss.attention.sliding_window
    swa_layers: tuple[bool, ...]
    rope: RopeParams         # full-attention layers
    rope_swa: RopeParams     # windowed layers: rope.freq_base_swa when present, else the same
    n_expert: int            # gpt-oss.expert_count
    n_expert_used: int       # gpt-oss.expert_used_count

    @classmethod
    def from_gguf(cls, g: GGUF) -> "Params":
        k = lambda key, default=None: g.get(f"{ARCH}.{key}", default)  # noqa: E731
        n_embd, n_head = int(g.require(f"{ARCH}.embedding_length")), int(g.require(f"{ARCH}.attention.head_count"))
        n_layer = int(g.require(f"{ARCH}.block_count"))
        head_dim = int(k("attention.key_length", n_embd // n_head))
        n_swa = int(g.require(f"{ARCH}.attention.sliding_window"))
        n_rot = int(k("rope.dimension_count", head_dim))
        rope = rope_params_from_gguf(g, ARCH, n_dims=n_rot, mode="neox")
        base_swa = k("rope.freq_base_swa")
        rope_swa = rope if base_swa is None else RopeParams(**{**rope.__dict__, "freq_base": float(base_swa)})
        return cls(
            n_vocab=g.tensors["token_embd.weight"].ne[1], n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            n_head_kv=int(k("attention.head_count_kv", n_head)), head_dim=head_dim,
            n_ctx_train=int(k("context_length", 131072)), rms_eps=float(k("attention.layer_norm_rms_epsilon", 1e-5)),
            n_swa=n_swa, swa_layers=swa_layers_from_gguf(g, ARCH, n_layer, n_swa, default_period=2),
            rope=rope, rope_swa=rope_swa,
            n_expert=int(g.require(f"{ARCH}.expert_count")), n_expert_used=int(g.require(f"{ARCH}.expert_used_count")),
        )


class Model(DecoderModel):
    Params = Params
    router_trace: list | None = None  # set to [] to record each layer's routing margins

    def load_layer(self, i: int, L) -> None:
        for name in ("attn_norm", "attn_output", "attn_output_bias", "attn_sinks", "post_attention_norm",
                     "ffn_gate_inp", "ffn_gate_inp_bias", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            getattr(L, name)
        # expert biases are 2-D (n_expert, n): float arrays the expert products gather by chosen id
        bias = {name: self.w.floats(f"blk.{i}.{name}.bias") for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")}
        self.__dict__.setdefault("exp_bias", []).append(bias)

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        local = p.swa_layers[i]
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        o = attend(be, cache, i, q, k, v, pos, p.rope_swa if local else p.rope, scale=1.0 / np.sqrt(p.head_dim),
                   window=p.n_swa if local else 0, sinks=L.attn_sinks)
        h = h + be.matmul(o, L.attn_output, L.attn_output_bias)
        return h + self._experts(be, be.rms_norm(h, L.post_attention_norm, p.rms_eps), L, self.exp_bias[i])

    def _experts(self, be, x, L, bias):
        """llama.cpp build_moe_ffn with LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT and SWIGLU_OAI."""
        p = self.p
        logits = be.matmul(x, L.ffn_gate_inp, L.ffn_gate_inp_bias)                    # (n_tok, n_expert)
        if self.router_trace is not None:  # k-th minus (k+1)-th logit: how near a different choice was
            top = -np.sort(-be.to_numpy(logits), axis=-1)
            self.router_trace.append(top[:, p.n_expert_used - 1] - top[:, p.n_expert_used])
        ids, weights = be.moe_route(logits, p.n_expert_used, "softmax_weight")        # (n_tok, n_used)
        up = be.matmul_experts(x, L.ffn_up_exps, ids, bias["ffn_up_exps"])
        gate = be.matmul_experts(x, L.ffn_gate_exps, ids, bias["ffn_gate_exps"])
        act = be.swiglu_oai(gate, up, SWIGLU_ALPHA, SWIGLU_LIMIT)
        down = be.matmul_experts(act, L.ffn_down_exps, ids, bias["ffn_down_exps"])
        return be.moe_combine(down, weights)


def top_k_experts(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits per row, largest first (ggml_argsort_top_k), as int32 (n_tok, k)."""
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k].astype(np.int32)
