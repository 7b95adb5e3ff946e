"""`qwen2`: Qwen 2 and Qwen 2.5 (0.5B .. 72B, Coder, Math), QwQ, and DeepSeek-R1's Qwen distills.

Follows llama.cpp `src/models/qwen2.cpp` (shared formats.md §3.4): the llama block with biases on
the Q, K and V projections (none on the output projection), NeoX RoPE (the converter leaves the Q/K
rows as Hugging Face has them, unlike llama's), SwiGLU FFN, an optional `output.bias`. The small
sizes (0.5B-3B) tie the LM head to `token_embd`, 7B and up ship `output.weight`.

`qwen3` and `qwen3moe` are this block with per-head Q/K norms and routed experts: their modules
override `norm_qk` and `ffn` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from engine.gguf_file import GGUF
from kernels import RopeParams

from .common import DecoderModel, DecoderParams, attend, gated_ffn
from .llama import rope_params_from_gguf


@dataclass(frozen=True)
class Params(DecoderParams):
    rope: RopeParams     # {arch}.rope.{dimension_count, freq_base, scaling.*}, NeoX

    arch: ClassVar[str] = "qwen2"

    @classmethod
    def from_gguf(cls, g: GGUF) -> "Params":
        f = DecoderParams.fields_from_gguf(g, cls.arch)
        n_rot = int(g.get(f"{cls.arch}.rope.dimension_count", f["head_dim"]))
        return cls(**f, rope=rope_params_from_gguf(g, cls.arch, n_dims=n_rot, mode="neox"),
                   **cls.extra_from_gguf(g))

    @classmethod
    def extra_from_gguf(cls, g: GGUF) -> dict:
        """The fields a subclass adds (qwen3moe's experts)."""
        return {}


class Model(DecoderModel):
    Params = Params

    def load_layer(self, i: int, L) -> None:
        for name in ("attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
            getattr(L, name)

    def norm_qk(self, be, L, q, k):
        """What happens to the projected heads before RoPE: nothing in Qwen 2."""
        return q, k

    def ffn(self, be, L, x):
        return gated_ffn(be, x, L.ffn_gate, L.ffn_up, L.ffn_down)

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        q, k = self.norm_qk(be, L, q, k)
        o = attend(be, cache, i, q, k, v, pos, p.rope, scale=1.0 / np.sqrt(p.head_dim))
        h = h + be.matmul(o, L.attn_output)
        return h + self.ffn(be, L, be.rms_norm(h, L.ffn_norm, p.rms_eps))
