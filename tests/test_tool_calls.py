"""Tool calls: each family's parser on recorded model outputs (tests/data/tool_call_outputs.json, each
with its source), streamed in one-character and one-token pieces with no marker leaking into the
content; format detection from real chat templates; the forcing grammars against llguidance; and
`tool_choice="required"` on SmolLM2 giving a call whose arguments validate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from engine.constrain import ConstraintError, compile_grammar
from engine.tool_calls import (FORMATS, Generic, Hermes, Llama3, Mistral, ToolCallStream, check_tools, format_for,
                               json_value_end, polyfill_tool_messages)

DATA = Path(__file__).parent / "data"
CASES = json.loads((DATA / "tool_call_outputs.json").read_text())["cases"]
BY_NAME = {cls.name: cls for cls in FORMATS}
MARKERS = ("<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|python_tag|>", '"tool_call"',
           '"response"', '"name"')


def _ids(cases):
    return [f"{c['family']}-{i}" for i, c in enumerate(cases)]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_recorded_output_parses(case):
    assert case["source"]
    p = BY_NAME[case["family"]]().parse(case["text"], final=True)
    assert p.content == case["content"]
    assert [(c.name, json.loads(c.arguments)) for c in p.tool_calls] == \
        [(c["name"], c["arguments"]) for c in case["tool_calls"]]
    for got, want in zip(p.tool_calls, case["tool_calls"]):
        if "id" in want:
            assert got.id == want["id"]


def _stream(fmt, pieces):
    """Feed pieces; check every delta as it comes; return (content, calls) put together from them."""
    s = ToolCallStream(fmt)
    content, calls = "", []
    for piece in pieces:
        deltas = s.feed(piece)
        for kind, text, name, cid in deltas:
            if kind == "content":
                content += text
                assert not any(m in content for m in MARKERS[:6]), f"marker leaked into content: {content!r}"
            elif name is not None:
                assert text == "" and cid
                calls.append([name, ""])
            else:
                assert calls, "argument fragment before its call was opened"
                calls[-1][1] += text
    deltas, parsed = s.finish()
    for kind, text, name, cid in deltas:
        if kind == "content":
            content += text
        elif name is not None:
            calls.append([name, ""])
        else:
            calls[-1][1] += text
    msg = s.message(parsed)
    assert content == msg["content"]
    assert [[c["function"]["name"], c["function"]["arguments"]] for c in msg.get("tool_calls", [])] == calls
    return content, calls


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_recorded_output_streamed_by_character(case):
    content, calls = _stream(BY_NAME[case["family"]](), list(case["text"]))
    assert content == case["content"]
    assert [(n, json.loads(a)) for n, a in calls] == [(c["name"], c["arguments"]) for c in case["tool_calls"]]


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_path):
    from engine.tokenizer import Tokenizer

    return Tokenizer.from_gguf(smollm2_path)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_recorded_output_streamed_by_token(case, smol_tokenizer):
    """One real token per piece (SmolLM2's vocabulary: markers arrive split, e.g. `<`, `tool`, `_call`)."""
    t = smol_tokenizer
    pieces = [t.token_to_piece(i).decode("utf-8", errors="surrogateescape")
              for i in t.tokenize(case["text"], add_bos=False)]
    assert "".join(pieces) == case["text"]
    content, calls = _stream(BY_NAME[case["family"]](), pieces)
    assert content == case["content"]
    assert [(n, json.loads(a)) for n, a in calls] == [(c["name"], c["arguments"]) for c in case["tool_calls"]]


def test_partial_call_is_announced_before_it_ends():
    s = ToolCallStream(Hermes())
    out = s.feed('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert ("content", "Sure.", None, None) in out
    assert [d[2] for d in out if d[0] == "tool_call" and d[2]] == ["get_weather"]
    assert "".join(d[1] for d in out if d[0] == "tool_call") == '{"city": "Pa'


def test_json_value_end():
    t = '{"a": "}", "b": [1, {"c": "\\""}]} tail'
    assert t[:json_value_end(t, 0)] == '{"a": "}", "b": [1, {"c": "\\""}]}'
    assert json_value_end('{"a": [1, 2', 0) is None
    assert json_value_end('"x\\"y" ', 0) == 6
    assert json_value_end("12, 3", 0) == 2 and json_value_end("12", 0) is None


# --- formats from real chat templates


@pytest.fixture(scope="module")
def templates():
    import fetch_test_models as f

    from conftest import _model

    return {fam: _model(name).read_text() for fam, name in f.TOOL_TEMPLATES.items()}


def test_format_detected_from_the_template(templates):
    for family, src in templates.items():
        assert format_for(src).name == family
    assert format_for("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}").name == "generic"
    assert format_for(templates["hermes"], response_schema={"type": "object"}).name == "generic"


def test_templates_render_tools_and_tool_results(templates):
    from engine.chat_template import ChatTemplate

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "21 C, sunny"}]
    for family, src in templates.items():
        out = ChatTemplate(src, "<s>", "</s>").apply(msgs, tools=tools)
        assert "get_weather" in out and "21 C, sunny" in out, family
        assert polyfill_tool_messages(msgs, ChatTemplate(src)) == msgs  # they know tool messages
    chatml = ChatTemplate.from_name("chatml")
    flat = polyfill_tool_messages(msgs, chatml)
    assert [m["role"] for m in flat] == ["user", "assistant", "user"]
    assert json.loads(flat[1]["content"])["tool_calls"][0] == {"name": "get_weather", "arguments": {"city": "Paris"},
                                                               "id": "abcdefghi"}
    assert json.loads(flat[2]["content"])["tool_response"]["content"] == "21 C, sunny"


# --- the forcing grammars, checked by llguidance token by token


TOOLS = [{"type": "function", "function": {"name": "special_function", "parameters": {
    "type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]}}}]


def _accepts(grammar, tok, text: str) -> bool:
    m = grammar.constraint()
    ids = tok.tokenize(text, add_bos=False)
    try:
        for i in ids:
            m.accept(i)
    except ConstraintError:
        return False
    return m.accepting


@pytest.mark.parametrize("fmt,good,bad", [
    (Hermes(), '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>',
     '<tool_call>\n{"name": "special_function", "arguments": {"arg1": "one"}}\n</tool_call>'),
    (Llama3(), '{"name": "special_function", "parameters": {"arg1": 1}}',
     '{"name": "other_function", "parameters": {"arg1": 1}}'),
    (Mistral(), '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, "id": "abcdefghi"}]',
     '[TOOL_CALLS][{"name": "special_function", "arguments": {}, "id": "abcdefghi"}]'),
    (Generic(), '{"tool_call": {"name": "special_function", "arguments": {"arg1": 1}}}',
     '{"response": "no call"}'),
])
def test_required_grammar_accepts_a_valid_call_only(fmt, good, bad, smol_tokenizer):
    g = compile_grammar(smol_tokenizer, **fmt.grammar(TOOLS, "required", False, smol_tokenizer))
    assert _accepts(g, smol_tokenizer, good)
    assert not _accepts(g, smol_tokenizer, bad)
    assert not _accepts(g, smol_tokenizer, "Hello!")


def test_auto_grammar_allows_text_or_a_valid_call(smol_tokenizer):
    t = smol_tokenizer
    g = compile_grammar(t, **Hermes().grammar(TOOLS, "auto", False, t))
    assert _accepts(g, t, "Just an answer.")
    assert _accepts(g, t, 'Let me check.<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n</tool_call>')
    assert not _accepts(g, t, 'Let me check.<tool_call>\n{"name": "special_function", "arguments": {"arg1": "x"}}')
    g = compile_grammar(t, **Generic().grammar(TOOLS, "auto", False, t))
    assert _accepts(g, t, '{"response": "hi"}')
    assert _accepts(g, t, '{"tool_call": {"name": "special_function", "arguments": {"arg1": 1}}}')


def test_check_tools_rejects_bad_requests():
    with pytest.raises(ConstraintError, match="tool_choice"):
        check_tools(TOOLS, "sometimes")
    with pytest.raises(ConstraintError, match="not among the tools"):
        check_tools(TOOLS, {"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ConstraintError, match=r"tools\[0\]"):
        check_tools([{"type": "function", "function": {}}], "auto")
    assert check_tools(TOOLS, {"type": "function", "function": {"name": "special_function"}})[1:] == \
        ("required", "special_function")


# --- on a real model


@pytest.fixture(scope="module")
def smol(smollm2_path):
    from engine.engine import Engine

    return Engine.load(smollm2_path, n_ctx=2048, n_threads=2)


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string", "maxLength": 30},
                                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                  "required": ["city", "unit"]}}}]


def test_required_forces_a_valid_call_on_smollm2(smol):
    msgs = [{"role": "user", "content": "Tell me a joke."}]  # nothing asks for the tool: the grammar does
    r = smol.chat(msgs, tools=WEATHER, tool_choice="required", max_tokens=80, temperature=0)
    assert r.finish_reason == "tool_calls"
    (call,) = r.message["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER[0]["function"]["parameters"])
    streamed = list(smol.chat(msgs, tools=WEATHER, tool_choice="required", max_tokens=80, temperature=0, stream=True))
    opened = [p for p in streamed if p.kind == "tool_call" and p.name]
    assert [p.name for p in opened] == ["get_weather"]
    args = "".join(p.text for p in streamed if p.kind == "tool_call")
    assert args == call["function"]["arguments"]
    assert not "".join(p.text for p in streamed if p.kind == "content")


def test_tool_result_round_trip_on_smollm2(smol):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees and sunny"}]
    plan = smol.chat_plan(msgs, tools=WEATHER)
    assert "21 degrees and sunny" in plan.prompt and '"tool_response"' in plan.prompt
    r = smol.chat(msgs, tools=WEATHER, tool_choice="none", max_tokens=24, temperature=0)
    assert r.message["content"] and "tool_calls" not in r.message


# --- gpt-oss (harmony): only the forcing grammar is ours, the parser is engine/harmony.py


def test_harmony_grammars_on_the_tiny_gpt_oss(tiny_gpt_oss_path):
    from engine.chat import _harmony_grammar
    from engine.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(tiny_gpt_oss_path)

    def ids(text):
        return tok.tokenize(text, add_bos=False, special=True)

    def accepts(g, text):
        c = g.constraint()
        try:
            for i in ids(text):
                c.accept(i)
        except ConstraintError:
            return False
        return c.accepting

    g = compile_grammar(tok, **_harmony_grammar(WEATHER, "required", None, tok))
    call = ('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
            '{"city": "Oslo", "unit": "celsius"}<|call|>')
    assert accepts(g, call)
    assert accepts(g, "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant" + call)
    assert not accepts(g, call.replace('"celsius"', '"kelvin"'))
    assert not accepts(g, "<|channel|>final<|message|>It is sunny.<|return|>")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    g = compile_grammar(tok, **_harmony_grammar(None, "none", schema, tok))
    assert accepts(g, '<|channel|>final<|message|>{"n": 3}')
    assert not accepts(g, "<|channel|>final<|message|>three")
