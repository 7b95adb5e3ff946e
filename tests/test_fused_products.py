"""Stacked Q/K/V and gate/up products (engine/models/common.py Weights.stacked) on the CPU backend.

Where the backend fuses products (`fuses_products`), each layer's Q, K and V weights (and its gate and
up weights) are stacked into one matrix at load, so a token makes one product instead of three (two):
SmolLM2 goes from 211 products a token to 121. Rows are computed independently, so every logit
must be bit for bit what the separate products give, for prompts (tiled products) and decode steps
(integer row dots) alike, on the real test models and on architectures with biased Q/K/V (Qwen 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine
from kernels.numba_cpu import NumbaBackend

PROMPT = "The quick brown fox jumps over the lazy dog because"


def logits_both_ways(path, monkeypatch, **kw):
    """(fused engine, prompt logits, decode-step logits) then the same without fusing."""
    out = []
    for fuse in (True, False):
        monkeypatch.setattr(NumbaBackend, "fuses_products", fuse)
        eng = Engine.load(path, n_ctx=128, n_threads=2, **kw)
        ids = eng.tokenize(PROMPT)[:10]
        cache = eng.model.new_cache(32)
        steps = np.concatenate([eng.backend.to_numpy(eng.model.forward([t], cache)) for t in ids[:4]])
        out.append((eng, eng.logits(ids), steps))
    return out


def test_stacked_products_give_the_same_logits(real_model_path, monkeypatch):
    (fused, prompt_f, steps_f), (plain, prompt_p, steps_p) = logits_both_ways(real_model_path, monkeypatch)
    m = fused.model
    assert any(q.qkv is not None for q in m.qkv) or all(q.v.qtype != q.q.qtype for q in m.qkv)
    assert all(g is not None for g in m.ffn_gate_up)
    assert all(q.qkv is None for q in plain.model.qkv) and all(g is None for g in plain.model.ffn_gate_up)
    q0 = next((q for q in m.qkv if q.qkv is not None), None)
    assert q0 is None or q0.qkv.shape == (q0.q.shape[0] + q0.k.shape[0] + q0.v.shape[0], q0.q.shape[1])
    np.testing.assert_array_equal(prompt_f, prompt_p)
    np.testing.assert_array_equal(steps_f, steps_p)
    assert fused.model.w.unused() == set()


def test_biased_qkv_are_stacked_with_their_biases(tmp_path, monkeypatch):
    """Qwen 2 holds attn_{q,k,v}.bias: stacked weights take the stacked biases."""
    import tiny_families

    path = tiny_families.write_family("qwen2", tmp_path / "tiny-qwen2.gguf", ftype="Q8_0")
    (fused, prompt_f, steps_f), (_, prompt_p, steps_p) = logits_both_ways(path, monkeypatch)
    assert fused.model.qkv[0].qkv is not None and fused.model.qkv[0].qkv_bias is not None
    np.testing.assert_array_equal(prompt_f, prompt_p)
    np.testing.assert_array_equal(steps_f, steps_p)


def test_mixed_types_stay_separate(real_model_path, monkeypatch):
    """Stacking needs one type and one row width: Gemma 3's Q/K are Q5_0 but its V is Q8_0, so its
    Q/K/V stay three products; SmolLM2's are all Q4_1 and stack."""
    monkeypatch.setattr(NumbaBackend, "fuses_products", True)
    eng = Engine.load(real_model_path, n_ctx=64, n_threads=2)
    for q in eng.model.qkv:
        same = q.q.qtype == q.k.qtype == q.v.qtype
        assert (q.qkv is not None) == same
