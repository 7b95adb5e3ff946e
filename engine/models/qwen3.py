"""`qwen3`: Qwen 3 dense models (0.6B .. 32B) and their distills.

Follows llama.cpp `src/models/qwen3.cpp` (shared formats.md §3.4): Qwen 2's block without the
Q/K/V biases, plus an RMSNorm of every query and key head (`attn_q_norm`, `attn_k_norm`, one weight
of head_dim shared by the heads) between the projection and RoPE. The head size comes from
`qwen3.attention.key_length` and need not be n_embd / n_head (0.6B: 16 heads of 128 in a 1024-wide
model), so the projections are (n_head * head_dim, n_embd) and the output projection its transpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import qwen2


@dataclass(frozen=True)
class Params(qwen2.Params):
    arch: ClassVar[str] = "qwen3"


class Model(qwen2.Model):
    Params = Params

    def load_layer(self, i: int, L) -> None:
        super().load_layer(i, L)
        L.attn_q_norm, L.attn_k_norm

    def norm_qk(self, be, L, q, k):
        eps = self.p.rms_eps
        return be.rms_norm(q, L.attn_q_norm, eps), be.rms_norm(k, L.attn_k_norm, eps)
