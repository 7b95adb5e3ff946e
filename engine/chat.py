"""One chat request made ready to generate: the prompt, the tool-call format, the constraint.

`plan_chat` does what llama-server's common_chat_templates_apply does before generation: it picks
the tool-call format for the model's template (engine/tool_calls.py), rewrites the messages the
template cannot render (tool calls and results for templates that know no tools), renders and
tokenizes the prompt, and compiles the constraint: the request's own `response_format` / `json_schema`
/ `grammar`, or the grammar that `tool_choice` asks for. Errors in any of those are
ConstraintError (a ValueError), before anything is generated, so the server answers 400.

`tool_pieces` turns the generated pieces into content and tool-call pieces and the final message.
gpt-oss's harmony output keeps its own parser (Engine._harmony_pieces); only its grammar is here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from .constrain import CompiledGrammar, ConstraintError, compile_grammar, schema_from_response_format
from .tool_calls import (ToolCallStream, ToolFormat, _function, _json_rule, _marker_term, check_tools, format_for,
                         polyfill_tool_messages, template_knows_tools)


@dataclass
class ChatPlan:
    ids: list[int]
    prompt: str
    tool_format: ToolFormat | None = None      # parse the output for tool calls in this syntax
    grammar: CompiledGrammar | None = None     # constrain the output
    special_ids: frozenset[int] = field(default_factory=frozenset)  # control tokens to render (markers)
    tools: list[dict] | None = None


def _harmony_grammar(tools: list[dict] | None, choice: str, response_schema: Any, vocab=None) -> dict:
    """gpt-oss: optional analysis, then a forced call (`to=functions.NAME ... <|call|>`) or a final
    answer whose text follows the schema. Harmony's markers are written as the vocabulary has them
    (control tokens by id, rendered ones as text)."""
    t = {m: _marker_term(f"<|{m}|>", vocab) for m in ("channel", "message", "end", "start", "constrain", "call")}
    analysis = (f'analysis: {t["channel"]} "analysis" {t["message"]} thought {t["start"]} "assistant"\n'
                f'thought[lazy]: TEXT {t["end"]}\nTEXT: /(.|\\n)*/\n')  # lazy: the text ends at the first <|end|>
    if tools and choice == "required":
        alts = []
        for i, tool in enumerate(tools):
            f = _function(tool)
            alts.append(f"call{i}")
            analysis += (f'call{i}: {t["channel"]} "commentary to=functions.{f["name"]}" " "? '
                         f'({t["constrain"]} "json")? {t["message"]} args{i} {t["call"]}\n'
                         f"args{i}: {_json_rule(f['parameters'])}\n")
        return {"lark": f"start: analysis? ({' | '.join(alts)})\n{analysis}"}
    if response_schema is not None:
        return {"lark": f'start: analysis? {t["channel"]} "final" {t["message"]} body\n'
                        f"body: {_json_rule(response_schema)}\n{analysis}"}
    return {}


def plan_chat(engine, messages: list[dict], template: str | None = None, tools: list | None = None,
              tool_choice: Any = None, parallel_tool_calls: bool | None = None, reasoning_effort: str | None = None,
              template_kwargs: dict | None = None, response_format: Any = None, grammar: str | None = None,
              json_schema: Any = None) -> ChatPlan:
    tmpl = engine.chat_template(template)
    tok = engine.tokenizer
    extra = dict(template_kwargs or {})
    if reasoning_effort is not None:
        extra["reasoning_effort"] = reasoning_effort
    response_schema = schema_from_response_format(response_format)
    if response_schema is not None and json_schema is not None:
        raise ConstraintError("give either 'response_format' or 'json_schema', not both")
    if json_schema is not None:
        response_schema = json.loads(json_schema) if isinstance(json_schema, str) else json_schema
    choice, name = "none", None
    if tools:
        tools, choice, name = check_tools(tools, tool_choice)
        if grammar is not None and choice != "none":
            raise ConstraintError("'grammar' cannot be combined with tools (the tool-call grammar constrains the output)")
    chosen = [t for t in (tools or []) if name is None or _function(t)["name"] == name]
    parallel = bool(parallel_tool_calls) and name is None

    if engine.is_harmony:
        if grammar is not None:
            raise ConstraintError("'grammar' is not supported with gpt-oss's harmony format; use response_format")
        if tools:
            extra["tools"] = tools
        prompt = engine.apply_template(messages, template=template, **extra)
        kw = _harmony_grammar(chosen, choice, response_schema, tok)
        plan = ChatPlan([], prompt, None, compile_grammar(tok, **kw) if kw else None, tools=tools or None)
    else:
        fmt = format_for(tmpl.source, response_schema) if tools else None
        msgs = polyfill_tool_messages(messages, tmpl) if any(
            m.get("role") == "tool" or m.get("tool_calls") for m in messages) else messages
        if tools and (template_knows_tools(tmpl) or choice == "none"):
            extra["tools"] = tools
        if fmt is not None and choice != "none":
            msgs = fmt.prepare(msgs, tools, tmpl)
        prompt = engine.apply_template(msgs, template=template, **extra)
        if fmt is not None and choice != "none":
            compiled = compile_grammar(tok, **fmt.grammar(chosen, choice, parallel, tok))
        else:
            fmt = None
            compiled = compile_grammar(tok, grammar=grammar, json_schema=response_schema)
        special = set()
        for marker in (fmt.markers if fmt else ()):
            tid = tok.token_to_id(marker)
            if tid is not None and tok.is_control(tid):
                special.add(tid)
        plan = ChatPlan([], prompt, fmt, compiled, frozenset(special), tools or None)
    bos = tok.bos_text
    plan.ids = engine.tokenize(plan.prompt, add_bos=not (bos and plan.prompt.startswith(bos)), special=True)
    return plan


def tool_pieces(pieces, fmt: ToolFormat) -> Iterator:
    """Content and tool-call pieces from the generated ones; the last piece's completion carries the
    message (`tool_calls` with their ids, finish_reason "tool_calls" when the model called one)."""
    from .engine import Piece

    stream = ToolCallStream(fmt)

    def out(deltas, piece):
        lp = piece.logprobs
        for kind, text, name, cid in deltas:
            yield Piece(text, piece.token, kind=kind, name=name, call_id=cid, logprobs=lp)
            lp = None

    for piece in pieces:
        if piece.completion is None:
            yield from out(stream.feed(piece.text), piece)
            continue
        deltas, parsed = stream.finish()
        yield from out(deltas, piece)
        done = piece.completion
        done.message = stream.message(parsed)
        if parsed.tool_calls:
            done.finish_reason = "tool_calls"
        yield Piece("", None, done.finish_reason, done)

