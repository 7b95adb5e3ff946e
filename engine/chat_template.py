"""Chat templates: the GGUF's `tokenizer.chat_template` rendered with Jinja2, plus llama.cpp's built-ins.

Rendering follows HF transformers (`utils/chat_template_utils.py`, shared formats.md §5.1):
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)` with `loopcontrols` and a no-op
`{% generation %}` tag, HF's `tojson` (no HTML escaping, `indent`/`separators`/`sort_keys`),
`raise_exception` and `strftime_now`. Variables: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `tools`, and every extra keyword (`reasoning_effort`, `enable_thinking`, ...).

`render` gives what HF's `apply_chat_template(tokenize=False)` gives, except that message content given as
a list of parts is joined with "\\n" (llama.cpp's `to_json_oaicompat(concat_typed_text=true)`) when
the template cannot render typed content. `apply` adds what llama.cpp's `common_chat_templates_apply`
does on top (see its docstring).

Templates come with model files from anyone: they render in Jinja's sandbox (no attribute walks to
`__globals__`, `__subclasses__`, `os`, `open`), in a separate process bounded in time, memory and
output size (engine/template_guard.py), so a template that loops or renders gigabytes is stopped with a
ChatTemplateError naming the bound.

The built-ins (`BUILTIN_TEMPLATES`) are Jinja versions of llama.cpp's C++ formatters
(`src/llama-chat.cpp`, `llm_chat_apply_template`), under llama.cpp's names plus a few aliases. A GGUF
without a template gets ChatML, as llama.cpp's `common_chat_templates_init` does.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that does not compile, or that fails (or calls raise_exception) while rendering."""


class _RaisedByTemplate(jinja2.TemplateError):
    pass


def _raise_exception(message: str = "") -> None:
    raise _RaisedByTemplate(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # HF overrides Jinja's tojson, which HTML-escapes (<, >, &, ') and knows no ensure_ascii
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (HF's AssistantTracker): renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, except that touching an unsafe attribute (`''.__class__`) fails the
    render at once instead of quietly yielding an undefined that prints as ''."""

    def unsafe_undefined(self, obj: Any, attribute: str):
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False,
                                        extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = _environment()


def render_guarded(compiled: dict, source: str, context: dict, max_chars: int) -> str:
    """Render `source` (compiled once into `compiled`), stopping past `max_chars` characters; every
    failure a RenderFailed with ChatTemplate's message. Runs in a template_guard worker."""
    from .template_guard import RenderFailed

    template = compiled.get(source)
    if template is None:
        if len(compiled) >= 32:
            compiled.clear()
        try:
            template = compiled[source] = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise RenderFailed(f"chat template does not compile: {e.message} (line {e.lineno})") from None
        except RecursionError:
            raise RenderFailed("chat template does not compile: nested too deeply") from None
    out, n = [], 0
    try:
        for chunk in template.generate(**context):
            n += len(chunk)
            if n > max_chars:
                raise RenderFailed(f"chat template output exceeds {max_chars} characters; stopped")
            out.append(chunk)
    except RenderFailed:
        raise
    except MemoryError:
        raise
    except _RaisedByTemplate as e:
        raise RenderFailed(f"chat template raised an exception: {e.message}") from None
    except jinja2.exceptions.SecurityError as e:
        raise RenderFailed(f"chat template blocked by the sandbox: {e}") from None
    except Exception as e:  # noqa: BLE001 -- any failure inside a template is the template's
        raise RenderFailed(f"chat template failed: {type(e).__name__}: {e}") from None
    return "".join(out)

# --- llama.cpp's built-in formats (src/llama-chat.cpp, llm_chat_apply_template), as Jinja.
# `| trim(_WS)` is llama-chat.cpp's trim(): C isspace() only, not every Unicode space.
_WS = "' \\t\\n\\v\\f\\r'"

_CHATML = (  # common/chat.cpp CHATML_TEMPLATE_SRC, the same text as LLM_CHAT_TEMPLATE_CHATML
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)


def _llama2(system: bool, bos_inside: bool, strip: bool) -> str:
    content = "(message.content | trim(" + _WS + "))" if strip else "message.content"
    sys_line = ("{{- '<<SYS>>\\n' + c + '\\n<</SYS>>\\n\\n' -}}" if system else "{{- c + '\\n' -}}")
    return (
        "{%- set ns = namespace(inside=true) -%}{{- '[INST] ' -}}"
        "{%- for message in messages -%}{%- set c = " + content + " -%}"
        "{%- if not ns.inside -%}{%- set ns.inside = true -%}"
        "{{- '<s>[INST] ' if " + ("true" if bos_inside else "false") + " else '[INST] ' -}}{%- endif -%}"
        "{%- if message.role == 'system' -%}" + sys_line +
        "{%- elif message.role == 'user' -%}{{- c + ' [/INST]' -}}"
        "{%- else -%}{{- c + '</s>' -}}{%- set ns.inside = false -%}{%- endif -%}"
        "{%- endfor -%}"
    )


def _mistral(leading: str, trailing: str, trim_assistant: bool) -> str:
    assistant = "(message.content | trim(" + _WS + "))" if trim_assistant else "message.content"
    return (
        "{%- set ns = namespace(inside=false) -%}"
        "{%- for message in messages -%}"
        "{%- if not ns.inside -%}{{- '" + leading + "[INST]" + trailing + "' -}}"
        "{%- set ns.inside = true -%}{%- endif -%}"
        "{%- if message.role == 'system' -%}{{- message.content + '\\n\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- message.content + '" + leading + "[/INST]' -}}"
        "{%- else -%}{{- '" + trailing + "' + " + assistant + " + '</s>' -}}{%- set ns.inside = false -%}{%- endif -%}"
        "{%- endfor -%}"
    )


def _mistral_v7(space: str) -> str:
    return (
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}"
        "{{- '[SYSTEM_PROMPT]" + space + "' + message.content + '[/SYSTEM_PROMPT]' -}}"
        "{%- elif message.role == 'user' -%}{{- '[INST]" + space + "' + message.content + '[/INST]' -}}"
        "{%- else -%}{{- '" + space + "' + message.content + '</s>' -}}{%- endif -%}"
        "{%- endfor -%}"
    )


def _per_message(body: str, gen_prompt: str = "") -> str:
    """One line per message (`body` may use `message`), then the generation prompt."""
    out = "{%- for message in messages -%}" + body + "{%- endfor -%}"
    if gen_prompt:
        out += "{%- if add_generation_prompt -%}{{- '" + gen_prompt + "' -}}{%- endif -%}"
    return out


_TRIMMED = "(message.content | trim(" + _WS + "))"

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": _CHATML,
    "llama2": _llama2(system=False, bos_inside=False, strip=False),
    "llama2-sys": _llama2(system=True, bos_inside=False, strip=False),
    "llama2-sys-bos": _llama2(system=True, bos_inside=True, strip=False),
    "llama2-sys-strip": _llama2(system=True, bos_inside=False, strip=True),
    "mistral-v1": _mistral(" ", " ", False),
    "mistral-v3": _mistral("", " ", True),
    "mistral-v3-tekken": _mistral("", "", False),
    "mistral-v7": _mistral_v7(" "),
    "mistral-v7-tekken": _mistral_v7(""),
    "phi3": _per_message("{{- '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' -}}", "<|assistant|>\\n"),
    "phi4": _per_message("{{- '<|im_start|>' + message.role + '<|im_sep|>' + message.content + '<|im_end|>' -}}",
                         "<|im_start|>assistant<|im_sep|>"),
    "falcon3": _per_message("{{- '<|' + message.role + '|>\\n' + message.content + '\\n' -}}", "<|assistant|>\\n"),
    "zephyr": _per_message("{{- '<|' + message.role + '|>\\n' + message.content + '<|endoftext|>\\n' -}}",
                           "<|assistant|>\\n"),
    "monarch": _per_message(
        "{{- ('' if loop.first else '<s>') + message.role + '\\n' + message.content + '</s>\\n' -}}",
        "<s>assistant\\n"),
    "gemma": (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{%- set ns.system = ns.system + " + _TRIMMED + " -%}"
        "{%- else -%}{%- set role = 'model' if message.role == 'assistant' else message.role -%}"
        "{{- '<start_of_turn>' + role + '\\n' -}}"
        "{%- if ns.system and role != 'model' -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}"
        "{{- " + _TRIMMED + " + '<end_of_turn>\\n' -}}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
    ),
    "orion": (
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{%- set ns.system = ns.system + message.content -%}"
        "{%- elif message.role == 'user' -%}{{- 'Human: ' -}}"
        "{%- if ns.system -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}"
        "{{- message.content + '\\n\\nAssistant: </s>' -}}"
        "{%- else -%}{{- message.content + '</s>' -}}{%- endif -%}{%- endfor -%}"
    ),
    "openchat": _per_message(
        "{%- if message.role == 'system' -%}{{- message.content + '<|end_of_turn|>' -}}"
        "{%- else -%}{{- 'GPT4 Correct ' + message.role[:1].upper() + message.role[1:] + ': ' + message.content"
        " + '<|end_of_turn|>' -}}{%- endif -%}", "GPT4 Correct Assistant:"),
    "vicuna": _per_message(
        "{%- if message.role == 'system' -%}{{- message.content + '\\n\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- 'USER: ' + message.content + '\\n' -}}"
        "{%- elif message.role == 'assistant' -%}{{- 'ASSISTANT: ' + message.content + '</s>\\n' -}}{%- endif -%}",
        "ASSISTANT:"),
    "vicuna-orca": _per_message(
        "{%- if message.role == 'system' -%}{{- 'SYSTEM: ' + message.content + '\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- 'USER: ' + message.content + '\\n' -}}"
        "{%- elif message.role == 'assistant' -%}{{- 'ASSISTANT: ' + message.content + '</s>\\n' -}}{%- endif -%}",
        "ASSISTANT:"),
    "deepseek": _per_message(
        "{%- if message.role == 'system' -%}{{- message.content -}}"
        "{%- elif message.role == 'user' -%}{{- '### Instruction:\\n' + message.content + '\\n' -}}"
        "{%- elif message.role == 'assistant' -%}{{- '### Response:\\n' + message.content + '\\n<|EOT|>\\n' -}}"
        "{%- endif -%}", "### Response:\\n"),
    "deepseek2": _per_message(
        "{%- if message.role == 'system' -%}{{- message.content + '\\n\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- 'User: ' + message.content + '\\n\\n' -}}"
        "{%- elif message.role == 'assistant' -%}{{- 'Assistant: ' + message.content + '<｜end▁of▁sentence｜>' -}}"
        "{%- endif -%}", "Assistant:"),
    "deepseek3": _per_message(
        "{%- if message.role == 'system' -%}{{- message.content + '\\n\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- '<｜User｜>' + message.content -}}"
        "{%- elif message.role == 'assistant' -%}{{- '<｜Assistant｜>' + message.content + '<｜end▁of▁sentence｜>' -}}"
        "{%- endif -%}", "<｜Assistant｜>"),
    "command-r": _per_message(
        "{%- if message.role == 'system' -%}{{- '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + " + _TRIMMED
        + " + '<|END_OF_TURN_TOKEN|>' -}}"
        "{%- elif message.role == 'user' -%}{{- '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + " + _TRIMMED
        + " + '<|END_OF_TURN_TOKEN|>' -}}"
        "{%- elif message.role == 'assistant' -%}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' + " + _TRIMMED
        + " + '<|END_OF_TURN_TOKEN|>' -}}{%- endif -%}", "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
    "llama3": _per_message(
        "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + " + _TRIMMED + " + '<|eot_id|>' -}}",
        "<|start_header_id|>assistant<|end_header_id|>\\n\\n"),
    "llama4": _per_message(
        "{{- '<|header_start|>' + message.role + '<|header_end|>\\n\\n' + " + _TRIMMED + " + '<|eot|>' -}}",
        "<|header_start|>assistant<|header_end|>\\n\\n"),
    "exaone3": _per_message(
        "{%- if message.role == 'system' -%}{{- '[|system|]' + " + _TRIMMED + " + '[|endofturn|]\\n' -}}"
        "{%- elif message.role == 'user' -%}{{- '[|user|]' + " + _TRIMMED + " + '\\n' -}}"
        "{%- elif message.role == 'assistant' -%}{{- '[|assistant|]' + " + _TRIMMED + " + '[|endofturn|]\\n' -}}"
        "{%- endif -%}", "[|assistant|]"),
    "granite": _per_message(
        "{{- '<|start_of_role|>' + message.role + '<|end_of_role|>' -}}"
        "{%- if message.role == 'assistant_tool_call' -%}{{- '<|tool_call|>' -}}{%- endif -%}"
        "{{- message.content + '<|end_of_text|>\\n' -}}", "<|start_of_role|>assistant<|end_of_role|>\\n"),
    "megrez": _per_message(
        "{{- '<|role_start|>' + message.role + '<|role_end|>' + message.content + '<|turn_end|>' -}}",
        "<|role_start|>assistant<|role_end|>"),
}

# Other names for the same formats (llama-cpp-python's chat_format names and hyphenated spellings).
ALIASES: dict[str, str] = {
    "llama-2": "llama2",
    "llama-3": "llama3",
    "llama-4": "llama4",
    "phi-3": "phi3",
    "phi-4": "phi4",
    "mistral-instruct": "mistral-v3",  # Mistral-7B-Instruct-v0.3's format; v0.1/v0.2 are "mistral-v1"
    "command-r-plus": "command-r",
}
for _alias, _target in ALIASES.items():
    BUILTIN_TEMPLATES[_alias] = BUILTIN_TEMPLATES[_target]

_PROBE = "<<__ggufpy_probe__>>"


def _content_text(content: Any) -> Any:
    """llama.cpp's concat_typed_text: text parts joined with "\\n", other part types dropped."""
    if not isinstance(content, list):
        return content
    texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
    return "\n".join(t for t in texts if t is not None)


class ChatTemplate:
    """A compiled chat template. `source` is the Jinja text; `bos_token`/`eos_token` the token texts.

    `add_bos`/`add_eos` (the vocab's tokenizer.ggml.add_bos_token / add_eos_token) only matter to
    `apply`, which strips a leading BOS / trailing EOS text the tokenizer will add again.

    `render_timeout` (seconds) and `max_render_chars` bound every render (engine/template_guard.py).
    """

    render_timeout: float = 1.0
    max_render_chars: int = 8 << 20

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", *, name: str | None = None,
                 add_bos: bool = False, add_eos: bool = False):
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.name = name
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.builtin = name is not None and source is BUILTIN_TEMPLATES.get(name)
        self._caps: dict[str, bool] | None = None
        try:
            # parse only: compiling folds constant expressions, which runs template code
            # (`{{ 'x' * 10**10 }}`); that happens in the bounded renderer (engine/template_guard.py)
            _ENV.parse(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"chat template{f' {name!r}' if name else ''} does not compile: "
                                    f"{e.message} (line {e.lineno})") from e
        except (RecursionError, MemoryError) as e:
            raise ChatTemplateError(f"chat template{f' {name!r}' if name else ''} does not compile: "
                                    f"{type(e).__name__} (nested too deeply or too large)") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, {len(self.source)} chars)"

    # --- construction

    @classmethod
    def builtin_names(cls) -> list[str]:
        return sorted(BUILTIN_TEMPLATES)

    @classmethod
    def from_name(cls, name: str, bos_token: str = "", eos_token: str = "", **kw) -> "ChatTemplate":
        if name not in BUILTIN_TEMPLATES:
            raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(BUILTIN_TEMPLATES))}")
        return cls(BUILTIN_TEMPLATES[name], bos_token, eos_token, name=name, **kw)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], tokens: Sequence[str],
                           name: str | None = None) -> "ChatTemplate":
        """The model's template (`tokenizer.chat_template`), or with `name` the GGUF's
        `tokenizer.chat_template.{name}` or else the built-in `name`. A GGUF without a template
        gets `tokenizer.chat_template.tool_use` if it has one, else ChatML (common_chat_templates_init)."""

        def token_text(key: str) -> str:
            tid = metadata.get(key)
            if tid is None or not isinstance(tid, int) or not 0 <= tid < len(tokens):
                return ""
            return tokens[tid]

        bos, eos = token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")
        spm = metadata.get("tokenizer.ggml.model") == "llama"
        kw = dict(add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", spm)),
                  add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)))
        if name is not None:
            src = metadata.get(f"tokenizer.chat_template.{name}")
            if isinstance(src, str) and src:
                return cls(src, bos, eos, name=name, **kw)
            if name in BUILTIN_TEMPLATES:
                return cls(BUILTIN_TEMPLATES[name], bos, eos, name=name, **kw)
            in_file = sorted(k.split(".", 2)[2] for k in metadata if k.startswith("tokenizer.chat_template."))
            known = sorted(BUILTIN_TEMPLATES) + [f"{n} (from the file)" for n in in_file]
            raise ValueError(f"unknown chat template {name!r}; known: {', '.join(known)}")
        src = metadata.get("tokenizer.chat_template")
        if isinstance(src, str) and src and src != "chatml":
            return cls(src, bos, eos, name=None, **kw)
        tool_use = metadata.get("tokenizer.chat_template.tool_use")
        if isinstance(tool_use, str) and tool_use:
            return cls(tool_use, bos, eos, name="tool_use", **kw)
        return cls(BUILTIN_TEMPLATES["chatml"], bos, eos, name="chatml", **kw)

    # --- rendering

    def _render(self, context: dict[str, Any]) -> str:
        from .template_guard import RenderFailed, render

        try:
            return render(self.source, context, timeout=self.render_timeout, max_chars=self.max_render_chars)
        except RenderFailed as e:
            raise ChatTemplateError(str(e)) from None

    def _probe(self, messages: list[dict]) -> str | None:
        try:
            return self._render(dict(messages=messages, add_generation_prompt=False, bos_token=self.bos_token,
                                     eos_token=self.eos_token, tools=None))
        except ChatTemplateError:  # a probe that fails means "not supported"
            return None

    @property
    def caps(self) -> dict[str, bool]:
        """What the template renders (llama.cpp's jinja caps, by probing): string content, typed
        (list-of-parts) content, a system role."""
        if self._caps is None:
            out_s = self._probe([{"role": "user", "content": _PROBE}])
            out_t = self._probe([{"role": "user", "content": [{"type": "text", "text": _PROBE}]}])
            out_sys = self._probe([{"role": "system", "content": _PROBE}, {"role": "user", "content": "Hey"}])
            self._caps = {
                "supports_string_content": out_s is not None and _PROBE in out_s,
                "supports_typed_content": out_t is not None and _PROBE in out_t,
                "supports_system_role": out_sys is not None and _PROBE in out_sys,
            }
        return self._caps

    def _normalize(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Typed content joined for templates that only render strings (or strings wrapped into a
        text part for templates that only render parts), as llama.cpp's render_message_to_json."""
        msgs = [dict(m) for m in messages]
        has_parts = any(isinstance(m.get("content"), list) for m in msgs)
        if self.builtin:
            for m in msgs:
                m["content"] = _content_text(m.get("content")) or ""
            return msgs
        if not has_parts:
            return msgs
        caps = self.caps
        if caps["supports_typed_content"] and not caps["supports_string_content"]:
            for m in msgs:
                if isinstance(m.get("content"), str):
                    m["content"] = [{"type": "text", "text": m["content"]}]
        elif not caps["supports_typed_content"]:
            for m in msgs:
                m["content"] = _content_text(m.get("content"))
        return msgs

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               tools: list | None = None, **kwargs: Any) -> str:
        """The template's text for `messages`, as HF renders it (BOS text included if the template
        writes it). Extra keywords become template variables."""
        context = {
            "messages": self._normalize(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "tools": tools,
        }
        context.update(kwargs)
        return self._render(context)

    def apply(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
              tools: list | None = None, enable_thinking: bool = True, **kwargs: Any) -> str:
        """The prompt llama.cpp's common_chat_templates_apply (Jinja path) would build:

        * `developer` messages become `system` (except for gpt-oss templates, which know the role);
        * when the template drops system messages, each is merged into the next message
          (system + "\\n" + content), or dropped when nothing follows;
        * content None -> "", typed content joined as in `render`;
        * variables: `enable_thinking` (default true), `datetime` ("%b %d %Y") and `date_string`
          ("%d %b %Y"), `tools` only when non-empty, `add_generation_prompt` only when true, and
          the keyword arguments (chat_template_kwargs) last;
        * a leading BOS text is stripped when the vocab adds BOS itself, a trailing EOS text when it
          adds EOS.
        """
        gpt_oss = "<|channel|>" in self.source
        msgs = []
        for m in messages:
            m = dict(m)
            if m.get("role") == "developer" and not gpt_oss:
                m["role"] = "system"
            if m.get("content") is None:
                m["content"] = ""
            msgs.append(m)
        if any(m.get("role") == "system" for m in msgs) and not self.caps["supports_system_role"]:
            merged, pending = [], None
            for m in msgs:
                if m.get("role") == "system":
                    text = _content_text(m["content"])
                    pending = text if pending is None else pending + "\n" + text
                    continue
                if pending is not None:
                    m["content"] = pending + "\n" + _content_text(m["content"])
                    pending = None
                merged.append(m)
            msgs = merged
        now = datetime.now()
        context: dict[str, Any] = {
            "messages": self._normalize(msgs),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "enable_thinking": enable_thinking,
            "datetime": now.strftime("%b %d %Y"),
            "date_string": now.strftime("%d %b %Y"),
        }
        if tools:
            context["tools"] = tools
        context.update(kwargs)
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        out = self._render(context)
        if self.add_bos and self.bos_token and out.startswith(self.bos_token):
            out = out[len(self.bos_token):]
        if self.add_eos and self.eos_token and out.endswith(self.eos_token):
            out = out[: -len(self.eos_token)]
        return out
