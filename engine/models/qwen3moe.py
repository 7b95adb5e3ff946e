"""`qwen3moe`: Qwen 3 mixtures of experts (30B-A3B, 235B-A22B, Coder-30B-A3B).

Follows llama.cpp `src/models/qwen3moe.cpp` (shared formats.md §3.4): Qwen 3's attention (per-head
Q/K norms, no biases) and, in place of the dense FFN, routed experts without a shared one: router
`ffn_gate_inp` (kept in f32 by the quantizer), softmax over all router logits, the top
`expert_used_count` experts, their weights renormalised to sum to 1 (build_moe_ffn with SOFTMAX
gating and norm_w), each a SwiGLU FFN of `expert_feed_forward_length` from the stacked
`ffn_{gate,up,down}_exps`. Only the chosen experts' rows are read (common.moe_ffn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.gguf_file import GGUF

from . import qwen3
from .common import moe_ffn


@dataclass(frozen=True)
class Params(qwen3.Params):
    n_expert: int = 0        # qwen3moe.expert_count
    n_expert_used: int = 0   # qwen3moe.expert_used_count

    arch: ClassVar[str] = "qwen3moe"

    @classmethod
    def extra_from_gguf(cls, g: GGUF) -> dict:
        return dict(n_expert=int(g.require(f"{cls.arch}.expert_count")),
                    n_expert_used=int(g.require(f"{cls.arch}.expert_used_count")))


class Model(qwen3.Model):
    Params = Params

    def load_layer(self, i: int, L) -> None:
        for name in ("attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate_inp",
                     "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            getattr(L, name)

    def ffn(self, be, L, x):
        return moe_ffn(be, x, L.ffn_gate_inp, L.ffn_gate_exps, L.ffn_up_exps, L.ffn_down_exps, self.p.n_expert_used)
