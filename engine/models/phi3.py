"""`phi3`: Phi-3 / Phi-3.5 mini and medium, Phi-4 and Phi-4-mini.

Follows llama.cpp `src/models/phi3.cpp`:
- fused projections: `attn_qkv` holds Q, K and V one after the other, `ffn_up` holds the gate and
  the up projection (2 * n_ff rows, gate first, as ggml_swiglu splits it); both are split into row
  slices at load time (Weights.rows: zero-copy, the same products);
- NeoX RoPE over `rope.dimension_count` dims (Phi-4-mini rotates 96 of 128); Q is scaled by
  1/sqrt(head_dim) after RoPE and attention runs with scale 1;
- LongRoPE (Phi-3/3.5 128k, Phi-4-mini): per-pair frequency factors `rope_factors_short` and
  `rope_factors_long`, the long ones when the context served (`model.n_ctx`, which the engine sets;
  padded to 256 as llama.cpp pads it) exceeds `rope.scaling.original_context_length`
  (llama_model::get_rope_factors), and the magnitude `rope.scaling.attn_factor` on cos/sin;
- `attention.sliding_window` is read but not applied: llama.cpp turns Phi's window off ("Phi SWA is
  currently disabled", PR 13676: its converters do not record which layers use the window), and
  conformance means attending as llama.cpp does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.gguf_file import GGUF, GGUFError
from kernels import RopeParams

from .common import DecoderModel, DecoderParams, KVCache, attend, gated_ffn
from .llama import rope_params_from_gguf

ARCH = "phi3"
CTX_PAD = 256  # llama.cpp rounds n_ctx up to a multiple of this (llama_context)


@dataclass(frozen=True)
class Params(DecoderParams):
    n_ff: int            # phi3.feed_forward_length (ffn_up has 2 * n_ff rows)
    n_ctx_orig: int      # phi3.rope.scaling.original_context_length (default context_length)
    n_swa: int           # phi3.attention.sliding_window: not applied (see above)
    rope: RopeParams     # phi3.rope.*, NeoX, attn_factor = rope.scaling.attn_factor; no factors

    @classmethod
    def from_gguf(cls, g: GGUF) -> "Params":
        f = DecoderParams.fields_from_gguf(g, ARCH, rms_eps=1e-5)
        n_rot = int(g.get(f"{ARCH}.rope.dimension_count", f["head_dim"]))
        return cls(**f, n_ff=int(g.require(f"{ARCH}.feed_forward_length")),
                   n_ctx_orig=int(g.get(f"{ARCH}.rope.scaling.original_context_length", f["n_ctx_train"])),
                   n_swa=int(g.get(f"{ARCH}.attention.sliding_window", 0) or 0),
                   rope=rope_params_from_gguf(g, ARCH, n_dims=n_rot, mode="neox"))


class Model(DecoderModel):
    Params = Params

    def __init__(self, gguf: GGUF, backend, place=None):
        super().__init__(gguf, backend, place)
        w, rope = self.w, self.p.rope
        factors = {kind: w.raw(f"rope_factors_{kind}.weight").dequantize() if w.has(f"rope_factors_{kind}") else None
                   for kind in ("short", "long")}
        self.rope_short = replace(rope, freq_factors=factors["short"])
        self.rope_long = replace(rope, freq_factors=factors["long"])

    def load_layer(self, i: int, L) -> None:
        name, n_ff = f"blk.{i}.ffn_up.weight", self.p.n_ff
        if self.w.raw(name).shape[0] != 2 * n_ff:
            raise GGUFError(self.w.gguf.path, f"{name} has {self.w.raw(name).shape[0]} rows, not gate + up = {2 * n_ff}")
        L.attn_norm, L.attn_output, L.ffn_norm, L.ffn_down
        self.gate_up(i)

    def gate_up(self, i: int):
        """Layer i's gate and up weights: the two halves of its fused ffn_up."""
        name, n_ff = f"blk.{i}.ffn_up.weight", self.p.n_ff
        return self.w.rows(name, 0, n_ff), self.w.rows(name, n_ff, 2 * n_ff)

    def rope_for(self, cache: KVCache) -> RopeParams:
        n_ctx = -(-(self.n_ctx or cache.n_ctx) // CTX_PAD) * CTX_PAD
        return self.rope_long if n_ctx > self.p.n_ctx_orig else self.rope_short

    def layer(self, be, i: int, L, h, pos, cache):
        p = self.p
        q, k, v = self.qkv[i].project(be, be.rms_norm(h, L.attn_norm, p.rms_eps), p)
        o = attend(be, cache, i, q, k, v, pos, self.rope_for(cache), scale=1.0, q_scale=1.0 / np.sqrt(p.head_dim))
        h = h + be.matmul(o, L.attn_output)
        return h + gated_ffn(be, be.rms_norm(h, L.ffn_norm, p.rms_eps), *self.gate_up(i), L.ffn_down)
