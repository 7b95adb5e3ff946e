"""gpt-oss: the architecture against llama.cpp on a tiny random gpt-oss, MXFP4 products at gpt-oss-20b
shapes, and the harmony format (template, stop tokens, parsing, streaming).

The logits / greedy conformance on plain prompts is in test_conformance.py (model "tiny-gpt-oss");
here are the harmony prompts and what is particular to gpt-oss.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.engine import Engine
from engine.harmony import HarmonyParser, parse_harmony

from llama_ref import bars, cosine, llama, margins, ref_logits

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Tokyo? 東京の天気は？"},
    {"role": "assistant", "content": "It is sunny.", "thinking": "Look it up."},
    {"role": "user", "content": "And tomorrow? Use the tool."},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


@pytest.fixture(scope="module")
def eng(tiny_gpt_oss_path):
    return Engine.load(tiny_gpt_oss_path, n_ctx=1024, n_threads=2)


# --- the model


def test_params_alternate_windowed_and_full_layers_with_yarn(eng):
    p = eng.model.p
    assert p.swa_layers == (True, False, True, False) and p.n_swa == 16
    assert p.rope.mode == "neox" and p.rope.ext_factor == 1.0 and p.rope.freq_scale == 0.25
    assert eng.model.w.unused() == set()


NEAR_TIE = 0.01  # a router whose k-th and (k+1)-th logits are this close may choose either way


def routing_margins(eng, ids) -> np.ndarray:
    """Per position, the smallest (k-th minus (k+1)-th) router logit over the layers, as we computed them."""
    eng.model.router_trace = []
    try:
        eng.logits(ids)
        trace, n_layer = eng.model.router_trace, eng.model.p.n_layer
    finally:
        eng.model.router_trace = None
    return np.concatenate([np.stack(trace[i:i + n_layer]).min(0) for i in range(0, len(trace), n_layer)])


@pytest.mark.parametrize("effort", ["low", "high"])
def test_harmony_prompt_tokens_and_logits_match_llama_cpp(eng, tiny_gpt_oss_path, llama_cpp, effort):
    """Within 0.001 of identical over two sliding windows; further on, a router near-tie flips an
    expert choice (ours or llama.cpp's: neither is exact) and that changes the position and, through its
    keys and values, later ones a little. There the issue's bar holds for the median position and
    top-1 agrees at nearly all firm positions."""
    text = eng.apply_template(MESSAGES, tools=TOOLS, reasoning_effort=effort)
    assert f"Reasoning: {effort}" in text and text.endswith("<|start|>assistant")
    ids = eng.tokenize(text, add_bos=False, special=True)
    assert ids == llama(str(tiny_gpt_oss_path)).tokenize(text.encode(), add_bos=False, special=True)
    ours, ref = eng.logits(ids), ref_logits(tiny_gpt_oss_path, ids)
    min_cos, min_margin = bars(eng.gguf)
    assert min_cos == 0.97  # MXFP4: llama.cpp rounds activations to 8 bits
    cos = cosine(ours, ref)
    # two windows' worth of positions agree far inside the bar: windowed and full layers alike
    assert cos[:2 * eng.model.p.n_swa].min() > 0.999
    # somewhere after, a router near-tie flips an expert choice (here at position 43, margin 0.0036)
    assert routing_margins(eng, ids).min() < NEAR_TIE
    assert np.median(cos) >= min_cos
    firm = margins(ref) >= min_margin
    assert (ours.argmax(-1) == ref.argmax(-1))[firm].mean() >= 0.95


def test_return_and_call_end_generation_but_end_does_not(eng):
    tok = eng.tokenizer
    ids = {t: tok.token_to_id(t) for t in ("<|return|>", "<|call|>", "<|end|>", "<|channel|>")}
    assert tok.is_eog(ids["<|return|>"]) and tok.is_eog(ids["<|call|>"])
    assert not tok.is_eog(ids["<|end|>"])  # messages continue after <|end|> (llama.cpp's rule)
    # the structural markers are rendered in plain detokenization, so the parser can see them
    assert eng.detokenize([ids["<|channel|>"], ids["<|end|>"]]) == "<|channel|><|end|>"


# --- MXFP4 experts at gpt-oss-20b's shapes


def test_mxfp4_expert_products_at_gpt_oss_20b_shapes():
    import gguf

    from kernels.numba_cpu import NumbaBackend
    from quant import GGMLType

    from qdata import random_qtensor

    n_expert, n_ff, n_embd, top_k = 32, 2880, 2880, 4
    rng = np.random.default_rng(5)
    w = random_qtensor(GGMLType.MXFP4, (n_expert, n_ff, n_embd), rng)
    x = rng.standard_normal((3, n_embd)).astype(np.float32)
    ids = np.array([[0, 7, 31, 12], [7, 3, 0, 30], [31, 30, 29, 28]], np.int32)
    be = NumbaBackend(n_threads=2, activations="f32")
    got = be.matmul_experts(x, w, ids)
    raw = np.asarray(w.data).reshape(n_expert, -1)
    for e in np.unique(ids):
        ref_w = gguf.quants.dequantize(raw[e].reshape(n_ff, -1), gguf.GGMLQuantizationType.MXFP4)  # the reference
        t, u = np.nonzero(ids == e)
        want = x[t] @ ref_w.T
        err = np.abs(got[t, u] - want).max() / np.abs(want).max()
        assert err < 1e-5, (e, err)
    assert got.shape == (3, top_k, n_ff)


# --- harmony parsing, from recorded outputs

# gpt-oss-20b under llama.cpp, as printed in the third seed (no <|end|> after the analysis message)
RECORDED_SEED = ('<|channel|>analysis<|message|>We need to provide a Python code snippet that prints "Hello World". '
                 'The user is Japanese: "PythonでHello Worldを表示するコードを書いてください。" They want a code. '
                 'Provide code and maybe explanation. Keep it concise.<|start|>assistant<|channel|>final<|message|>'
                 '```python\n# Python で Hello World を表示するシンプルなコード\n\nprint("Hello World")\n```')
REASONING_AND_FINAL = ("<|channel|>analysis<|message|>The user greets. Reply briefly.<|end|>"
                       "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|return|>")
FINAL_ONLY = "<|channel|>final<|message|>42<|return|>"
TOOL_CALL = ("<|channel|>analysis<|message|>Need weather; call the tool.<|end|>"
             "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
             '{"location":"Tokyo"}<|call|>')
TOOL_CALL_RECIPIENT_FIRST = ('<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>'
                             '{"location": "Osaka"}<|call|>')
TRUNCATED = "<|channel|>analysis<|message|>Let me think about the sky. Rayleigh scat"


def test_seed_output_splits_reasoning_from_the_answer():
    r = parse_harmony(RECORDED_SEED)
    assert r.reasoning.startswith("We need to provide") and r.reasoning.endswith("Keep it concise.")
    assert r.content.startswith("```python") and 'print("Hello World")' in r.content
    assert "<|" not in r.content and "<|" not in r.reasoning


def test_reasoning_and_final():
    r = parse_harmony(REASONING_AND_FINAL)
    assert (r.reasoning, r.content, r.tool_calls, r.stopped_by) == (
        "The user greets. Reply briefly.", "Hello! How can I help?", [], "<|return|>")


def test_final_only():
    r = parse_harmony(FINAL_ONLY)
    assert (r.reasoning, r.content) == ("", "42")


@pytest.mark.parametrize("raw, city", [(TOOL_CALL, "Tokyo"), (TOOL_CALL_RECIPIENT_FIRST, "Osaka")])
def test_tool_call(raw, city):
    r = parse_harmony(raw)
    assert r.finish_reason == "tool_calls" and r.content == "" and r.stopped_by == "<|call|>"
    (call,) = r.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": city}


def test_truncated_mid_analysis_keeps_the_reasoning_and_no_content():
    r = parse_harmony(TRUNCATED)
    assert r.reasoning == "Let me think about the sky. Rayleigh scat" and r.content == "" and r.stopped_by is None


def test_plain_text_without_harmony_is_content():
    assert parse_harmony("Just an answer.").content == "Just an answer."


@pytest.mark.parametrize("raw", [RECORDED_SEED, REASONING_AND_FINAL, TOOL_CALL])
def test_streaming_in_chunks_of_every_size_never_leaks_a_marker(raw):
    whole = parse_harmony(raw)
    for size in range(1, 16):
        p = HarmonyParser()
        deltas = [d for i in range(0, len(raw), size) for d in p.feed(raw[i:i + size])]
        r = p.finish()
        assert (r.reasoning, r.content, r.tool_calls) == (whole.reasoning, whole.content, whole.tool_calls)
        for kind, want in (("reasoning", whole.reasoning), ("content", whole.content)):
            assert "".join(d.text for d in deltas if d.kind == kind) == want
        assert not any("<|" in d.text or "|>" in d.text for d in deltas)


def test_a_marker_split_across_pieces_is_held_back_until_whole():
    p = HarmonyParser()
    assert [d.text for d in p.feed("<|channel|>final<|message|>Hi <|re")] == ["Hi "]
    assert p.feed("tur") == []
    assert p.feed("n|>") == [] and p.finish().content == "Hi "


# --- Engine.chat on harmony output


def test_chat_streams_reasoning_and_content_apart(eng, monkeypatch):
    """The engine's chat path over a recorded completion, fed token by token as generation yields
    it (the tiny model's random weights cannot write harmony themselves)."""
    from engine.engine import Completion, Piece
    from engine.generate import Timings

    ids = eng.tokenize(REASONING_AND_FINAL.removesuffix("<|return|>"), add_bos=False, special=True)
    ret = eng.tokenizer.token_to_id("<|return|>")

    def recorded(prompt, stream=False, **kw):
        assert stream and prompt[-2:] == eng.tokenize("<|start|>assistant", add_bos=False, special=True)
        text = ""
        for t in ids:
            piece = eng.detokenize([t])
            text += piece
            yield Piece(piece, t)
        yield Piece("", None, "stop", Completion(text, ids, "stop", len(prompt), Timings(), eog_token=ret))

    monkeypatch.setattr(eng, "generate", recorded)
    pieces = list(eng.chat([{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.text for p in pieces if p.kind == "reasoning") == "The user greets. Reply briefly."
    assert "".join(p.text for p in pieces if p.kind == "content") == "Hello! How can I help?"
    done = pieces[-1].completion
    assert done.message == {"role": "assistant", "content": "Hello! How can I help?",
                            "reasoning_content": "The user greets. Reply briefly."}
    whole = eng.chat([{"role": "user", "content": "hi"}])
    assert whole.message == done.message and whole.finish_reason == "stop"


def test_chat_on_the_tiny_model_runs_and_never_leaks_markers(eng):
    r = eng.chat(MESSAGES[:2], max_tokens=24, temperature=0)
    assert r.message["role"] == "assistant"
    assert "<|channel|>" not in r.message["content"] and "<|message|>" not in r.message["content"]
