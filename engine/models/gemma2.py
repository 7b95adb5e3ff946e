"""`gemma2`: Gemma 2 (2B, 9B, 27B) and its fine-tunes.

Follows llama.cpp `src/models/gemma2.cpp`:
- embeddings scaled by sqrt(n_embd); the LM head is always the tied `token_embd`;
- RMSNorm before *and* after attention and the FFN (`post_attention_norm`, `post_ffw_norm`); the
  GGUF norm weights already hold Hugging Face's (1 + w);
- Q scaled by 1/sqrt(head_dim) after RoPE (27B: 1/sqrt(n_embd / n_head), as llama.cpp picks by
  size), attention with scale 1 and soft-capped scores cap*tanh(s/cap), cap =
  `attn_logit_softcapping` (default 50);
- sliding-window attention on every other layer (even layers windowed, window
  `attention.sliding_window`, default 4096), the same RoPE on both kinds unless
  `rope.freq_base_swa` says otherwise;
- GeGLU FFN (tanh GELU), NeoX RoPE, logits soft-capped by `final_logit_softcapping` (default 30).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import DecoderModel, DecoderParams, attend, gated_ffn, swa_layers_from_gguf
from .llama import rope_params_from_gguf

ARCH = "gemma2"


@dataclass(frozen=True)
class Params(DecoderParams):
    n_swa: int                    # gemma2.attention.sliding_window (default 4096)
    swa_layers: tuple[bool, ...]  # gemma2.attention.sliding_window_pattern (default period 2)
    rope: RopeParams              # gemma2.rope.*, NeoX
    rope_swa: RopeParams          # gemma2.rope.freq_base_swa on the windowed layers (default the same)
    attn_scale: float             # 1/sqrt(query_pre_attn_scalar), as llama.cpp picks it per size
    attn_softcap: float           # gemma2.attn_logit_softcapping (default 50)
    final_softcap: float          # gemma2.final_logit_softcapping (default 30)

    @classmethod
    def from_gguf(cls, g: GGUF) -> "Params":
        k = lambda key, default=None: g.get(f"{ARCH}.{key}", default)  # noqa: E731
        f = DecoderParams.fields_from_gguf(g, ARCH)
        n_swa = int(k("attention.sliding_window", 4096))
        rope = rope_params_from_gguf(g, ARCH, n_dims=int(k("rope.dimension_count", f["head_dim"])), mode="neox")
        base_swa = k("rope.freq_base_swa")
        # llama.cpp: the 27B (46 layers) scales by n_embd / n_head, the others by head_dim
        pre_attn = f["n_embd"] / f["n_head"] if f["n_layer"] == 46 else f["head_dim"]
        return cls(**f, n_swa=n_swa, swa_layers=swa_layers_from_gguf(g, ARCH, f["n_layer"], n_swa, default_period=2),
                   rope=rope, rope_swa=rope if base_swa is None else replace(rope, freq_base=float(base_swa)),
                   attn_scale=float(1.0 / np.sqrt(pre_attn)),
                   attn_softcap=float(k("attn_logit_softcapping", 50.0) or 0.0),
                   final_softcap=float(k("final_logit_softcapping", 30.0) or 0.0))


class Model(DecoderModel):
    Params = Params

    def load_layer(self, i: int, L) -> None:
        for name in ("attn_norm", "attn_output", "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
                     "post_ffw_norm"):
            getattr(L, name)

    def embed(self, be, tok):
        return be.get_rows(self.token_embd, tok) * np.float32(np.sqrt(self.p.n_embd))

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        local = p.swa_layers[i]
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        o = attend(be, cache, i, q, k, v, pos, p.rope_swa if local else p.rope, scale=1.0, q_scale=p.attn_scale,
                   window=p.n_swa if local else 0, softcap=p.attn_softcap)
        h = h + be.rms_norm(be.matmul(o, L.attn_output), L.post_attention_norm, p.rms_eps)
        f = gated_ffn(be, be.rms_norm(h, L.ffn_norm, p.rms_eps), L.ffn_gate, L.ffn_up, L.ffn_down, "geglu",
                      gate_up=self.ffn_gate_up[i])
        return h + be.rms_norm(f, L.post_ffw_norm, p.rms_eps)

    def logits(self, be, h):
        logits = super().logits(be, h)
        return be.softcap(logits, self.p.final_softcap) if self.p.final_softcap else logits
