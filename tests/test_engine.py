"""The library API (`Engine`) on the real SmolLM2: generation, streaming, stops, context limits, chat."""

from __future__ import annotations

import numpy as np
import pytest

from engine.engine import ContextLengthError, Engine
from engine.models import UnsupportedArchitecture, model_class


@pytest.fixture(scope="module")
def eng(smollm2_path):
    return Engine.load(smollm2_path, n_ctx=256, n_threads=2)


def test_logits_shape_and_dtype(eng):
    ids = eng.tokenize("Hello world")
    lg = eng.logits(ids)
    assert lg.shape == (len(ids), eng.n_vocab) and lg.dtype == np.float32 and np.isfinite(lg).all()


def test_tokenize_detokenize_roundtrip(eng):
    text = "Grüße aus 東京 🌸 — code: x = [1, 2]"
    ids = eng.tokenize(text, add_bos=False)
    assert eng.detokenize(ids) == text


def test_same_seed_same_text_and_greedy_is_deterministic(eng):
    a = eng.generate("Tell me a story about a cat.", max_tokens=24, temperature=0.8, seed=7, cache_prompt=False)
    b = eng.generate("Tell me a story about a cat.", max_tokens=24, temperature=0.8, seed=7, cache_prompt=False)
    assert a.text == b.text and a.tokens == b.tokens
    assert a.timings.cache_n == b.timings.cache_n == 0
    g1 = eng.generate("The sky is", max_tokens=12, temperature=0, cache_prompt=False)
    g2 = eng.generate("The sky is", max_tokens=12, temperature=0, cache_prompt=False)
    assert g1.tokens == g2.tokens


def test_prefix_cache_reuse_gives_the_same_tokens(smollm2_path):
    """Reused positions are whole aligned prompt batches, so a warm run is bit-identical to a cold one
    (with llama.cpp's 8-bit activations any other batch split would change last bits)."""
    from engine.generate import DEFAULT_BATCH

    eng = Engine.load(smollm2_path, n_ctx=1024, n_threads=2)
    system = " ".join(f"Rule {i}: answer in plain words." for i in range(40))
    prompt = eng.tokenize(system)
    assert DEFAULT_BATCH < len(prompt) < 2 * DEFAULT_BATCH
    cold = eng.generate(prompt, max_tokens=10, temperature=0)
    warm = eng.generate(prompt, max_tokens=10, temperature=0)
    other = eng.generate(prompt + eng.tokenize(" Then", add_bos=False), max_tokens=10, temperature=0)
    fresh = eng.generate(prompt + eng.tokenize(" Then", add_bos=False), max_tokens=10, temperature=0,
                         cache_prompt=False)
    assert cold.timings.cache_n == 0 and warm.timings.cache_n == other.timings.cache_n == DEFAULT_BATCH
    assert warm.tokens == cold.tokens and other.tokens == fresh.tokens


def test_stream_pieces_join_to_the_text(eng):
    full = eng.generate("List three fruits:", max_tokens=20, temperature=0)
    pieces = list(eng.generate("List three fruits:", max_tokens=20, temperature=0, stream=True))
    assert pieces[-1].completion is not None
    assert "".join(p.text for p in pieces) == full.text == pieces[-1].completion.text


def test_usage_timings_and_finish_reason(eng):
    r = eng.generate("Count: 1, 2, 3,", max_tokens=5, temperature=0)
    assert r.finish_reason == "length" and len(r.tokens) == 5
    assert r.usage == {"prompt_tokens": len(eng.tokenize("Count: 1, 2, 3,")), "completion_tokens": 5,
                       "total_tokens": r.usage["prompt_tokens"] + 5}
    t = r.timings.as_dict()
    assert t["predicted_n"] == 5 and t["predicted_per_second"] > 0 and t["prompt_ms"] > 0


def test_stop_string_cuts_and_never_leaks(eng):
    base = eng.generate("Count: 1, 2, 3,", max_tokens=12, temperature=0).text
    stop = base.strip()[2:4] if len(base.strip()) > 4 else base[:2]
    r = eng.generate("Count: 1, 2, 3,", max_tokens=12, temperature=0, stop=[stop])
    assert r.finish_reason == "stop" and stop not in r.text and base.startswith(r.text)


def test_prompt_longer_than_context_is_refused(eng):
    long = "word " * 400
    with pytest.raises(ContextLengthError, match="exceeds the context"):
        eng.generate(long, max_tokens=8)
    with pytest.raises(ContextLengthError):
        eng.generate("hi", max_tokens=1000)
    r = eng.generate("hi", max_tokens=1000, truncate=True, temperature=0)  # asked for: shortened, not refused
    assert len(r.tokens) <= eng.n_ctx


def test_chat_returns_an_assistant_message(eng):
    r = eng.chat([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}],
                 max_tokens=24, temperature=0)
    assert r.message["role"] == "assistant" and r.message["content"] == r.text
    assert "<|im_end|>" not in r.text and "4" in r.text


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(UnsupportedArchitecture, match="supported: gemma2, gemma3, gpt-oss, llama, phi3, qwen2, qwen3, qwen3moe$"):
        model_class("mamba")
