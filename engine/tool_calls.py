"""Tool calls for every model: how each family writes them, the grammar that forces one, the parser.

llama-server's chat handlers (common/chat.cpp) pick a format from the chat template's text; we
keep its formats and its order of detection:

    hermes   `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`  (Hermes 2/3, Qwen 2.5/3)
    llama3   `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`   (Llama 3.1-3.3)
    mistral  `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]`, or `[TOOL_CALLS]name[ARGS]{...}`
    generic  any other template: the model answers in JSON, `{"tool_call": {"name", "arguments"}}`,
             `{"tool_calls": [...]}` or `{"response": "..."}`, told so in the system message and held
             to it by a grammar (llama.cpp's fallback; it is what SmolLM2 and Gemma 3 get)

gpt-oss's harmony format has its own parser (engine/harmony.py).

`tool_choice` "required" or a named function constrains the output with a grammar built from the
tools' JSON schemas in the family's syntax (llguidance Lark with inline `%json`), so the arguments
always parse and match their schema; "auto" constrains the call only once the model starts one
(a lazy grammar, as llama.cpp's trigger words); "none" leaves the output free.

`parse(text, final)` reads a whole or partial output: for a partial one it returns only what can no
longer change (content up to a possible marker; a tool call once its name is known, its arguments
as far as written), which is what `ToolCallStream` turns into OpenAI's streamed deltas.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from .constrain import JSON_WHITESPACE, ConstraintError, close_objects

GENERIC_SYSTEM = ("Respond in JSON format, either with `tool_call` (a request to call tools) or with `response` "
                  "reply to the user's request")


@dataclass
class ToolCall:
    name: str
    arguments: str           # JSON text, as written (a prefix of it while streaming)
    id: str | None = None
    complete: bool = True


@dataclass
class Parsed:
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def new_call_id() -> str:
    """A random id in OpenAI's shape (llama.cpp's gen_tool_call_id: 32 alphanumerics)."""
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


# --- a tolerant scanner for JSON values in partial text


_WS = " \t\r\n"


def json_value_end(text: str, i: int) -> int | None:
    """Index just past the JSON value starting at text[i] (no leading whitespace), or None when the
    text ends first. Only the structure is checked (strings, brackets), not the value's validity."""
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        j = i + 1
        while j < len(text):
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return j + 1
            j += 1
        return None
    if c in "{[":
        depth, j, in_str = 0, i, False
        while j < len(text):
            ch = text[j]
            if in_str:
                if ch == "\\":
                    j += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i
    while j < len(text) and text[j] not in _WS + ",}]":
        j += 1
    return j if j < len(text) else None  # a number or literal may go on


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _string_prefix(raw: str) -> tuple[str, bool]:
    """Decode the JSON string body `raw` (after the opening quote) as far as it is certain:
    (text, closed)."""
    out, j = [], 0
    while j < len(raw):
        ch = raw[j]
        if ch == '"':
            return "".join(out), True
        if ch == "\\":
            if j + 1 >= len(raw):
                break
            e = raw[j + 1]
            if e == "u":
                if j + 6 > len(raw):
                    break
                code = int(raw[j + 2:j + 6], 16)
                if 0xD800 <= code < 0xDC00:  # a surrogate pair: wait for the low half
                    if j + 12 > len(raw):
                        break
                    low = int(raw[j + 8:j + 12], 16)
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    j += 12
                    continue
                out.append(chr(code))
                j += 6
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(e, e))
            j += 2
            continue
        out.append(ch)
        j += 1
    return "".join(out), False


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of one of `markers`."""
    hold = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), hold, -1):
            if text.endswith(m[:k]):
                hold = k
                break
    return hold


_NAME_ARGS = re.compile(r'\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(arguments|parameters)"\s*:\s*')


def _call_object(text: str, i: int, final: bool) -> tuple[ToolCall | None, int | None]:
    """A `{"name": ..., "arguments"|"parameters": ...}` object starting at text[i]: (call, end).
    The call is None while its name is not yet known; end is None while the object is open."""
    end = json_value_end(text, i)
    m = _NAME_ARGS.match(text, i)
    if m is None:
        if end is None:
            return None, None
        try:  # keys in another order: read the whole object
            obj = json.loads(text[i:end])
        except ValueError:
            return None, end
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None, end
        args = obj.get("arguments", obj.get("parameters", {}))
        return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                        obj.get("id") if isinstance(obj.get("id"), str) else None), end
    name = json.loads(f'"{m.group(1)}"')
    a = m.end()
    a_end = json_value_end(text, a)
    if a_end is None:
        return ToolCall(name, text[a:] if not final else text[a:].rstrip(), complete=False), None
    args = text[a:a_end]
    if args.startswith('"'):  # arguments given as a JSON string holding JSON
        try:
            args = json.loads(args)
        except ValueError:
            pass
    call_id = None
    if end is not None:
        try:
            obj = json.loads(text[i:end])
            call_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        except ValueError:
            pass
    return ToolCall(name, args, call_id, complete=end is not None), end


def _call_array(text: str, i: int, final: bool) -> tuple[list[ToolCall], int | None, bool]:
    """A JSON array of call objects starting at text[i] ('['): (calls, end, ok)."""
    calls, j = [], _skip_ws(text, i + 1)
    while j < len(text):
        if text[j] == "]":
            return calls, j + 1, True
        if text[j] != "{":
            return calls, None, False
        call, end = _call_object(text, j, final)
        if call is not None:
            calls.append(call)
        if end is None:
            return calls, None, True
        j = _skip_ws(text, end)
        if j < len(text) and text[j] == ",":
            j = _skip_ws(text, j + 1)
    return calls, None, True


# --- the formats


class ToolFormat:
    """One family's tool-call syntax. `markers` are texts the parser looks for: tokens with that text
    are rendered even when they are control tokens, and partial markers are held back from content."""

    name = "base"
    markers: tuple[str, ...] = ()

    @staticmethod
    def matches(source: str) -> bool:
        raise NotImplementedError

    def prepare(self, messages: list[dict], tools: list[dict], template) -> list[dict]:
        """The messages as the template should see them (the generic format adds its instructions)."""
        return messages

    def grammar(self, tools: list[dict], choice: str, parallel: bool, vocab) -> dict:
        """Keyword arguments for constrain.compile_grammar, or {} for no constraint."""
        raise NotImplementedError

    def parse(self, text: str, final: bool) -> Parsed:
        raise NotImplementedError


def _function(tool: dict) -> dict:
    f = tool.get("function", tool)
    params = f.get("parameters")
    return {"name": f["name"], "parameters": params if isinstance(params, dict) else {"type": "object"},
            "description": f.get("description")}


def _call_schema(tool: dict, args_key: str = "arguments", with_id: dict | None = None) -> dict:
    f = _function(tool)
    props = {"name": {"const": f["name"]}, args_key: close_objects(f["parameters"])}
    required = ["name", args_key]
    if with_id:
        props["id"] = {"type": "string", **with_id}
        required.append("id")
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _any_of(schemas: list[dict]) -> dict:
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _json_rule(schema: dict) -> str:
    s = dict(schema)
    s["x-guidance"] = {"whitespace_pattern": JSON_WHITESPACE}
    return "%json " + json.dumps(s, ensure_ascii=False)


def _marker_term(text: str, vocab) -> str:
    """A Lark term for a marker: the special token itself when the vocabulary has it as a control
    token (the model writes it as one token), else the literal text."""
    tid = vocab.token_to_id(text) if vocab is not None else None
    if tid is not None and vocab.is_control(tid):
        return f"<[{tid}]>"
    return json.dumps(text)


class Hermes(ToolFormat):
    name = "hermes"
    markers = ("<tool_call>", "</tool_call>")

    @staticmethod
    def matches(source):
        return "<tool_call>" in source

    def grammar(self, tools, choice, parallel, vocab):
        if choice == "none":
            return {}
        call = _json_rule(_any_of([_call_schema(t) for t in tools]))
        open_, close = _marker_term("<tool_call>", vocab), _marker_term("</tool_call>", vocab)
        body = f'call: {open_} "\\n"? body "\\n"? {close}\nbody: {call}\n'
        if choice == "auto":
            return {"lark": f'start: (pre call)* TEXT\npre[lazy]: TEXT {open_}\n'
                            f'call: "\\n"? body "\\n"? {close}\nbody: {call}\nTEXT: /(.|\\n)*/\n'}
        many = '(call "\\n"?)+' if parallel else "call"
        return {"lark": f"start: {many}\n{body}"}

    def parse(self, text, final):
        out, calls, i = [], [], 0
        while True:
            k = text.find("<tool_call>", i)
            if k < 0:
                rest = text[i:]
                if not final:
                    rest = rest[:len(rest) - _held_back(rest, self.markers)]
                out.append(rest)
                break
            out.append(text[i:k])
            j = _skip_ws(text, k + len("<tool_call>"))
            if j >= len(text) and not final:
                break
            if j >= len(text) or text[j] != "{":
                out.append(text[k:])  # not a call after all
                break
            call, end = _call_object(text, j, final)
            if call is not None:
                calls.append(call)
            if end is None:
                break
            j = _skip_ws(text, end)
            if text.startswith("</tool_call>", j):
                j += len("</tool_call>")
            elif not final and "</tool_call>".startswith(text[j:]):
                break
            i = _skip_ws(text, j) if calls else j
        content = "".join(out)
        return Parsed(content.rstrip() if calls and final else content, calls)


class Llama3(ToolFormat):
    name = "llama3"
    markers = ("<|python_tag|>",)

    @staticmethod
    def matches(source):
        return "<|start_header_id|>ipython<|end_header_id|>" in source

    def grammar(self, tools, choice, parallel, vocab):
        if choice == "none":
            return {}
        call = _json_rule(_any_of([_call_schema(t, "parameters") for t in tools]))
        if choice == "auto":  # text that does not open with "{", or one call
            return {"lark": f'start: (TEXT | call)?\nTEXT: /[^{{](.|\\n)*/\ncall: {call}\n'}
        return {"lark": f"start: call\ncall: {call}\n"}

    _BUILTIN = re.compile(r"\s*(\w+)\s*\.\s*call\((.*)\)\s*$", re.S)

    def parse(self, text, final):
        tag = text.find("<|python_tag|>")
        prefix, body = (text[:tag], text[tag + len("<|python_tag|>"):]) if tag >= 0 else ("", text)
        if tag >= 0 and final:
            m = self._BUILTIN.match(body)
            if m:  # a built-in tool: name.call(key="value", ...)
                args = {}
                for km in re.finditer(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,)]+)', m.group(2)):
                    v = km.group(2).strip()
                    try:
                        args[km.group(1)] = json.loads(v)
                    except ValueError:
                        args[km.group(1)] = v
                return Parsed(prefix, [ToolCall(m.group(1), json.dumps(args, ensure_ascii=False))])
        j = _skip_ws(body, 0)
        if j < len(body) and body[j] == "{":
            call, end = _call_object(body, j, final)
            if call is not None:
                return Parsed(prefix, [call])
            if end is None and not final:
                return Parsed(prefix, [])  # undecided: hold it back
        if not final:
            if tag >= 0 or j >= len(body):  # after the tag a call is being written; or nothing yet
                return Parsed(prefix, [])
            return Parsed(text[:len(text) - _held_back(text, self.markers)], [])
        return Parsed(text, [])


class Mistral(ToolFormat):
    name = "mistral"
    markers = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")

    @staticmethod
    def matches(source):
        return "[TOOL_CALLS]" in source

    def grammar(self, tools, choice, parallel, vocab):
        if choice == "none":
            return {}
        schema = {"type": "array", "items": _any_of([_call_schema(t, with_id={"pattern": "^[a-zA-Z0-9]{9}$"}) for t in tools]),
                  "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        marker = _marker_term("[TOOL_CALLS]", vocab)
        if choice == "auto":
            return {"lark": f"start: TEXT | pre calls\npre[lazy]: TEXT {marker}\ncalls: {_json_rule(schema)}\n"
                            f"TEXT: /(.|\\n)*/\n"}
        return {"lark": f"start: {marker} calls\ncalls: {_json_rule(schema)}\n"}

    def parse(self, text, final):
        k = text.find("[TOOL_CALLS]")
        if k < 0:
            return Parsed(text if final else text[:len(text) - _held_back(text, self.markers)], [])
        content, j = text[:k], _skip_ws(text, k + len("[TOOL_CALLS]"))
        if j >= len(text):
            return Parsed(content, [])
        if text[j] == "[":
            calls, end, ok = _call_array(text, j, final)
            if ok:
                return Parsed(content, calls)
            return Parsed(text if final else content, [])
        calls = []  # newer form: [TOOL_CALLS]name[ARGS]{...} or name[CALL_ID]id[ARGS]{...}, repeated
        while True:
            a = text.find("[ARGS]", j)
            if a < 0:
                break
            name, _, call_id = text[j:a].partition("[CALL_ID]")
            s = _skip_ws(text, a + len("[ARGS]"))
            end = json_value_end(text, s)
            calls.append(ToolCall(name.strip(), text[s:end] if end else text[s:].rstrip() if final else text[s:],
                                  call_id.strip() or None, complete=end is not None))
            if end is None:
                break
            j = _skip_ws(text, end)
            if text.startswith("[TOOL_CALLS]", j):
                j = _skip_ws(text, j + len("[TOOL_CALLS]"))
        return Parsed(content, calls)


class Generic(ToolFormat):
    name = "generic"

    @staticmethod
    def matches(source):
        return True

    def __init__(self, response_schema: Any = None):
        self.response_schema = response_schema

    def prepare(self, messages, tools, template):
        msgs = add_system(messages, GENERIC_SYSTEM)
        if not template_knows_tools(template):
            msgs = add_system(msgs, "You can call any of the following tools to satisfy the user's requests: "
                              + json.dumps(tools, indent=2, ensure_ascii=False))
        return msgs

    def grammar(self, tools, choice, parallel, vocab):
        if choice == "none":
            return {}
        # llama.cpp asks for an id of at least 4 characters; bounded here so a small model cannot run on
        calls = [_call_schema(t, with_id={"pattern": "^[a-zA-Z0-9_]{4,16}$"} if parallel else None) for t in tools]
        if parallel:
            call = {"type": "object", "properties": {"tool_calls": {"type": "array", "items": _any_of(calls),
                                                                    "minItems": 1}},
                    "required": ["tool_calls"], "additionalProperties": False}
        else:
            call = {"type": "object", "properties": {"tool_call": _any_of(calls)}, "required": ["tool_call"],
                    "additionalProperties": False}
        if choice != "auto":
            return {"json_schema": call}
        response = self.response_schema if self.response_schema is not None else {"type": "string"}
        answer = {"type": "object", "properties": {"response": response}, "required": ["response"],
                  "additionalProperties": False}
        return {"json_schema": {"anyOf": [call, answer]}}

    _HEAD = re.compile(r'\s*\{\s*"(tool_call|tool_calls|response)"\s*:\s*')

    def parse(self, text, final):
        m = self._HEAD.match(text)
        if m is None:
            if not final and (not text.strip() or re.fullmatch(r'\s*\{\s*("[a-z_]*)?', text)):
                return Parsed()
            return Parsed(text if final else "", [])
        v = m.end()
        if m.group(1) == "response":
            if v < len(text) and text[v] == '"':
                s, _ = _string_prefix(text[v + 1:])
                return Parsed(s, [])
            end = json_value_end(text, v)  # a structured response (json_schema with tools)
            if end is not None:
                return Parsed(text[v:end], [])
            return Parsed(text[v:].rstrip() if final else "", [])
        if m.group(1) == "tool_call":
            if v < len(text) and text[v] == "{":
                call, _ = _call_object(text, v, final)
                return Parsed("", [call] if call else [])
            return Parsed("", [])
        if v < len(text) and text[v] == "[":
            calls, _, _ = _call_array(text, v, final)
            return Parsed("", calls)
        return Parsed("", [])


# llama.cpp's order of detection (common_chat_templates_apply_jinja); generic last
FORMATS: tuple[type[ToolFormat], ...] = (Hermes, Llama3, Mistral, Generic)


def format_for(source: str, response_schema: Any = None) -> ToolFormat:
    """The tool-call format for a chat template's source. Tools with a JSON response schema go through
    the generic format, as llama.cpp routes that mix."""
    if response_schema is not None:
        return Generic(response_schema)
    for cls in FORMATS:
        if cls.matches(source):
            return cls() if cls is not Generic else Generic()
    return Generic()  # pragma: no cover


# --- messages for templates that do not know tools (minja's polyfills)


def template_knows_tools(template) -> bool:
    src = getattr(template, "source", "") or ""
    return "tools" in src


def add_system(messages: list[dict], text: str) -> list[dict]:
    """Append to the system message (after a blank line), or start the conversation with one."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0].get('content') or ''}\n\n{text}"
    else:
        msgs.insert(0, {"role": "system", "content": text})
    return msgs


def polyfill_tool_messages(messages: list[dict], template) -> list[dict]:
    """Assistant tool calls and `role: tool` results as text, for templates that render neither:
    the calls as the JSON the generic format asks for, the results as a user message holding
    {"tool_response": {"tool", "content"}} (minja's polyfills)."""
    src = getattr(template, "source", "") or ""
    if "tool_calls" in src and "tool" in src:
        return messages
    names: dict[str, str] = {}
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = c.get("function", {})
                args = f.get("arguments")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    pass
                names[c.get("id", "")] = f.get("name", "")
                calls.append({"name": f.get("name"), "arguments": args, **({"id": c["id"]} if c.get("id") else {})})
            body = {"tool_calls": calls}
            if m.get("content"):
                body["content"] = m["content"]
            m = {"role": "assistant", "content": json.dumps(body, indent=2, ensure_ascii=False)}
        elif m.get("role") == "tool":
            resp = {"tool": m.get("name") or names.get(m.get("tool_call_id", ""), ""), "content": m.get("content")}
            if m.get("tool_call_id"):
                resp["tool_call_id"] = m["tool_call_id"]
            m = {"role": "user", "content": json.dumps({"tool_response": resp}, indent=2, ensure_ascii=False)}
        out.append(m)
    return out


def check_tools(tools: Any, tool_choice: Any) -> tuple[list[dict], str, str | None]:
    """Validate OpenAI `tools` / `tool_choice`: (tools, choice, named function). Raises ConstraintError."""
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ConstraintError("'tools' must be an array of objects")
    for i, t in enumerate(tools):
        f = t.get("function", t) if t.get("type", "function") == "function" else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ConstraintError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}")
    name = None
    if tool_choice is None:
        choice = "auto"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("auto", "none", "required"):
            raise ConstraintError(f"'tool_choice' must be 'auto', 'none', 'required' or a function, not {tool_choice!r}")
        choice = tool_choice
    elif isinstance(tool_choice, dict):
        f = tool_choice.get("function") if isinstance(tool_choice.get("function"), dict) else tool_choice
        name = f.get("name")
        if not isinstance(name, str):
            raise ConstraintError("'tool_choice' as an object must be {'type': 'function', 'function': {'name'}}")
        known = [_function(t)["name"] for t in tools]
        if name not in known:
            raise ConstraintError(f"'tool_choice' names {name!r}, which is not among the tools ({', '.join(known)})")
        choice = "required"
    else:
        raise ConstraintError("'tool_choice' must be a string or an object")
    if not tools and choice == "required":
        raise ConstraintError("'tool_choice' is 'required' but no tools were given")
    return tools, choice, name


class ToolCallStream:
    """Turns streamed text into content and tool-call deltas by re-parsing the whole output each time
    and sending what changed (llama.cpp's common_chat_msg_diff). `feed` and `finish` return lists
    of (kind, text, name, call_id): ("content", text, None, None), ("tool_call", "", name, id) to open
    a call, then ("tool_call", fragment, None, None) for its arguments."""

    def __init__(self, fmt: ToolFormat):
        self.fmt = fmt
        self.text = ""
        self.sent_content = ""
        self.sent_calls: list[ToolCall] = []  # name, id and arguments sent so far

    def feed(self, piece: str) -> list[tuple]:
        self.text += piece
        p = self.fmt.parse(self.text, final=False)
        p.content = p.content.rstrip()  # whitespace before a call is dropped: send it once text follows
        return self._diff(p)

    def finish(self) -> tuple[list[tuple], Parsed]:
        parsed = self.fmt.parse(self.text, final=True)
        return self._diff(parsed), parsed

    def _diff(self, p: Parsed) -> list[tuple]:
        out = []
        if p.content != self.sent_content and p.content.startswith(self.sent_content):
            out.append(("content", p.content[len(self.sent_content):], None, None))
            self.sent_content = p.content
        for i, call in enumerate(p.tool_calls):
            if i >= len(self.sent_calls):
                self.sent_calls.append(ToolCall(call.name, "", call.id or new_call_id()))
                out.append(("tool_call", "", call.name, self.sent_calls[i].id))
            sent = self.sent_calls[i]
            if call.arguments != sent.arguments and call.arguments.startswith(sent.arguments):
                out.append(("tool_call", call.arguments[len(sent.arguments):], None, None))
                sent.arguments = call.arguments
        return out

    def message(self, parsed: Parsed) -> dict:
        """The final assistant message in OpenAI's shape, with the ids the stream announced."""
        msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        if parsed.tool_calls:
            calls = []
            for i, c in enumerate(parsed.tool_calls):
                cid = self.sent_calls[i].id if i < len(self.sent_calls) else (c.id or new_call_id())
                calls.append({"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
            msg["tool_calls"] = calls
        return msg
