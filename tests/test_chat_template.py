"""engine/chat_template.py: the test models' templates, llama.cpp's built-ins, the sandbox."""

from __future__ import annotations

import importlib.util
import json

import pytest

from engine.chat_template import ALIASES, BUILTIN_TEMPLATES, ChatTemplate, ChatTemplateError
from engine.gguf_file import GGUF

CONVO = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Ahoy, matey."},
    {"role": "user", "content": "Where is the treasure?"},
]

# google/gemma-3-*-it tokenizer_config.json "chat_template" (the 270m GGUF under test ships none)
GEMMA3_IT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


def _llama_cpp_formatter():
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except Exception:  # noqa: BLE001 -- a broken install is the same as none here
        return None
    return Jinja2ChatFormatter


def _check_with_llama_cpp_python(source: str, bos: str, eos: str, messages, expected: str) -> None:
    formatter = _llama_cpp_formatter()
    if formatter is None:
        return
    out = formatter(template=source, bos_token=bos, eos_token=eos, add_generation_prompt=True)(messages=messages)
    assert out.prompt == expected


@pytest.fixture(scope="module")
def smollm2_meta(smollm2_path):
    g = GGUF.open(smollm2_path)
    return g.metadata


@pytest.fixture(scope="module")
def gemma3_meta(gemma3_path):
    g = GGUF.open(gemma3_path)
    return g.metadata


# --- the test models


SMOL_EXPECTED = (
    "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
    "<|im_start|>user\nHello!<|im_end|>\n"
    "<|im_start|>assistant\nAhoy, matey.<|im_end|>\n"
    "<|im_start|>user\nWhere is the treasure?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_smollm2_template(smollm2_meta):
    tokens = smollm2_meta["tokenizer.ggml.tokens"]
    t = ChatTemplate.from_gguf_metadata(smollm2_meta, tokens)
    assert t.source == smollm2_meta["tokenizer.chat_template"] and t.name is None
    assert (t.bos_token, t.eos_token, t.add_bos) == ("<|im_start|>", "<|im_end|>", False)
    assert t.render(CONVO) == SMOL_EXPECTED
    assert t.apply(CONVO) == SMOL_EXPECTED  # no BOS to strip: add_bos_token is false
    assert t.render(CONVO, add_generation_prompt=False) == SMOL_EXPECTED[: -len("<|im_start|>assistant\n")]
    _check_with_llama_cpp_python(t.source, t.bos_token, t.eos_token, CONVO, SMOL_EXPECTED)


def test_smollm2_template_default_system_prompt_and_parts(smollm2_meta):
    t = ChatTemplate.from_gguf_metadata(smollm2_meta, smollm2_meta["tokenizer.ggml.tokens"])
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    # the template concatenates strings, so typed content is joined with "\n" first (as llama.cpp)
    assert not t.caps["supports_typed_content"] and t.caps["supports_string_content"]
    assert t.render(msgs) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n")


def test_gemma3_gguf_without_template_falls_back_to_chatml(gemma3_meta):
    assert "tokenizer.chat_template" not in gemma3_meta
    t = ChatTemplate.from_gguf_metadata(gemma3_meta, gemma3_meta["tokenizer.ggml.tokens"])
    assert t.name == "chatml" and t.source == BUILTIN_TEMPLATES["chatml"]
    assert (t.bos_token, t.eos_token, t.add_bos) == ("<bos>", "<eos>", True)
    assert t.render(CONVO) == SMOL_EXPECTED  # ChatML is what SmolLM2's template writes, too


GEMMA_EXPECTED = (
    "<bos><start_of_turn>user\nYou are a pirate.\n\nHello!<end_of_turn>\n"
    "<start_of_turn>model\nAhoy, matey.<end_of_turn>\n"
    "<start_of_turn>user\nWhere is the treasure?<end_of_turn>\n"
    "<start_of_turn>model\n"
)


def test_gemma3_it_template(gemma3_meta):
    tokens = gemma3_meta["tokenizer.ggml.tokens"]
    meta = dict(gemma3_meta, **{"tokenizer.chat_template": GEMMA3_IT_TEMPLATE})
    t = ChatTemplate.from_gguf_metadata(meta, tokens)
    assert t.render(CONVO) == GEMMA_EXPECTED
    _check_with_llama_cpp_python(t.source, t.bos_token, t.eos_token, CONVO, GEMMA_EXPECTED)
    # llama.cpp drops the leading BOS text: its tokenizer adds BOS (add_bos_token true)
    assert t.apply(CONVO) == GEMMA_EXPECTED[len("<bos>"):]
    # the template handles typed content itself: parts pass through (each trimmed, no separator)
    assert t.caps["supports_typed_content"] and t.caps["supports_string_content"]
    parts = [{"role": "user", "content": [{"type": "text", "text": " Hi "}, {"type": "text", "text": "there"}]}]
    assert t.render(parts) == "<bos><start_of_turn>user\nHithere<end_of_turn>\n<start_of_turn>model\n"


def test_gemma3_it_template_raise_exception(gemma3_meta):
    t = ChatTemplate(GEMMA3_IT_TEMPLATE, "<bos>", "<eos>")
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        t.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


# --- llama.cpp's built-in formats


SHORT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]

EXPECTED_BUILTINS = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
    "llama-2": "[INST] Be brief.\nHi [/INST]Hello.</s>[INST] Bye [/INST]",
    "llama-3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "vicuna": "Be brief.\n\nUSER: Hi\nASSISTANT: Hello.</s>\nUSER: Bye\nASSISTANT:",
    "gemma": "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
             "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
    "mistral-instruct": "[INST] Be brief.\n\nHi[/INST] Hello.</s>[INST] Bye[/INST]",
    "zephyr": "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n"
              "<|assistant|>\nHello.<|endoftext|>\n<|user|>\nBye<|endoftext|>\n<|assistant|>\n",
    "phi-3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n"
             "<|user|>\nBye<|end|>\n<|assistant|>\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILTINS))
def test_required_builtins_exact(name):
    assert ChatTemplate.from_name(name, "<s>", "</s>").render(SHORT) == EXPECTED_BUILTINS[name]


def _trim(s: str) -> str:
    return s.strip(" \t\n\v\f\r")


def reference_llm_chat_apply_template(name: str, chat, add_ass: bool) -> str:
    """A direct Python transcription of src/llama-chat.cpp llm_chat_apply_template."""
    name = ALIASES.get(name, name)
    out = []
    if name == "chatml":
        for m in chat:
            out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_ass:
            out.append("<|im_start|>assistant\n")
    elif name in ("mistral-v7", "mistral-v7-tekken"):
        sp = " " if name == "mistral-v7" else ""
        for m in chat:
            if m["role"] == "system":
                out.append(f"[SYSTEM_PROMPT]{sp}{m['content']}[/SYSTEM_PROMPT]")
            elif m["role"] == "user":
                out.append(f"[INST]{sp}{m['content']}[/INST]")
            else:
                out.append(f"{sp}{m['content']}</s>")
    elif name in ("mistral-v1", "mistral-v3", "mistral-v3-tekken"):
        lead = " " if name == "mistral-v1" else ""
        trail = "" if name == "mistral-v3-tekken" else " "
        inside = False
        for m in chat:
            if not inside:
                out.append(f"{lead}[INST]{trail}")
                inside = True
            if m["role"] == "system":
                out.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append(m["content"] + lead + "[/INST]")
            else:
                c = _trim(m["content"]) if name == "mistral-v3" else m["content"]
                out.append(trail + c + "</s>")
                inside = False
    elif name.startswith("llama2"):
        system = name != "llama2"
        bos_inside = name == "llama2-sys-bos"
        strip = name == "llama2-sys-strip"
        inside = True
        out.append("[INST] ")
        for m in chat:
            c = _trim(m["content"]) if strip else m["content"]
            if not inside:
                inside = True
                out.append("<s>[INST] " if bos_inside else "[INST] ")
            if m["role"] == "system":
                out.append(f"<<SYS>>\n{c}\n<</SYS>>\n\n" if system else c + "\n")
            elif m["role"] == "user":
                out.append(c + " [/INST]")
            else:
                out.append(c + "</s>")
                inside = False
    elif name in ("phi3", "falcon3", "zephyr"):
        end = {"phi3": "<|end|>\n", "falcon3": "\n", "zephyr": "<|endoftext|>\n"}[name]
        for m in chat:
            out.append(f"<|{m['role']}|>\n{m['content']}{end}")
        if add_ass:
            out.append("<|assistant|>\n")
    elif name == "phi4":
        for m in chat:
            out.append(f"<|im_start|>{m['role']}<|im_sep|>{m['content']}<|im_end|>")
        if add_ass:
            out.append("<|im_start|>assistant<|im_sep|>")
    elif name == "monarch":
        for i, m in enumerate(chat):
            out.append(("" if i == 0 else "<s>") + f"{m['role']}\n{m['content']}</s>\n")
        if add_ass:
            out.append("<s>assistant\n")
    elif name == "gemma":
        sys = ""
        for m in chat:
            if m["role"] == "system":
                sys += _trim(m["content"])
                continue
            role = "model" if m["role"] == "assistant" else m["role"]
            out.append(f"<start_of_turn>{role}\n")
            if sys and role != "model":
                out.append(sys + "\n\n")
                sys = ""
            out.append(_trim(m["content"]) + "<end_of_turn>\n")
        if add_ass:
            out.append("<start_of_turn>model\n")
    elif name == "orion":
        sys = ""
        for m in chat:
            if m["role"] == "system":
                sys += m["content"]
            elif m["role"] == "user":
                out.append("Human: ")
                if sys:
                    out.append(sys + "\n\n")
                    sys = ""
                out.append(m["content"] + "\n\nAssistant: </s>")
            else:
                out.append(m["content"] + "</s>")
    elif name == "openchat":
        for m in chat:
            if m["role"] == "system":
                out.append(m["content"] + "<|end_of_turn|>")
            else:
                out.append(f"GPT4 Correct {m['role'][0].upper() + m['role'][1:]}: {m['content']}<|end_of_turn|>")
        if add_ass:
            out.append("GPT4 Correct Assistant:")
    elif name in ("vicuna", "vicuna-orca"):
        for m in chat:
            if m["role"] == "system":
                out.append(f"SYSTEM: {m['content']}\n" if name == "vicuna-orca" else m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append(f"USER: {m['content']}\n")
            elif m["role"] == "assistant":
                out.append(f"ASSISTANT: {m['content']}</s>\n")
        if add_ass:
            out.append("ASSISTANT:")
    elif name == "deepseek":
        for m in chat:
            if m["role"] == "system":
                out.append(m["content"])
            elif m["role"] == "user":
                out.append(f"### Instruction:\n{m['content']}\n")
            elif m["role"] == "assistant":
                out.append(f"### Response:\n{m['content']}\n<|EOT|>\n")
        if add_ass:
            out.append("### Response:\n")
    elif name == "deepseek2":
        for m in chat:
            if m["role"] == "system":
                out.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append(f"User: {m['content']}\n\n")
            elif m["role"] == "assistant":
                out.append(f"Assistant: {m['content']}<｜end▁of▁sentence｜>")
        if add_ass:
            out.append("Assistant:")
    elif name == "deepseek3":
        for m in chat:
            if m["role"] == "system":
                out.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                out.append("<｜User｜>" + m["content"])
            elif m["role"] == "assistant":
                out.append("<｜Assistant｜>" + m["content"] + "<｜end▁of▁sentence｜>")
        if add_ass:
            out.append("<｜Assistant｜>")
    elif name == "command-r":
        tag = {"system": "<|SYSTEM_TOKEN|>", "user": "<|USER_TOKEN|>", "assistant": "<|CHATBOT_TOKEN|>"}
        for m in chat:
            if m["role"] in tag:
                out.append(f"<|START_OF_TURN_TOKEN|>{tag[m['role']]}{_trim(m['content'])}<|END_OF_TURN_TOKEN|>")
        if add_ass:
            out.append("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")
    elif name == "llama3":
        for m in chat:
            out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{_trim(m['content'])}<|eot_id|>")
        if add_ass:
            out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    elif name == "llama4":
        for m in chat:
            out.append(f"<|header_start|>{m['role']}<|header_end|>\n\n{_trim(m['content'])}<|eot|>")
        if add_ass:
            out.append("<|header_start|>assistant<|header_end|>\n\n")
    elif name == "exaone3":
        for m in chat:
            c = _trim(m["content"])
            if m["role"] == "system":
                out.append(f"[|system|]{c}[|endofturn|]\n")
            elif m["role"] == "user":
                out.append(f"[|user|]{c}\n")
            elif m["role"] == "assistant":
                out.append(f"[|assistant|]{c}[|endofturn|]\n")
        if add_ass:
            out.append("[|assistant|]")
    elif name == "granite":
        for m in chat:
            out.append(f"<|start_of_role|>{m['role']}<|end_of_role|>")
            if m["role"] == "assistant_tool_call":
                out.append("<|tool_call|>")
            out.append(m["content"] + "<|end_of_text|>\n")
        if add_ass:
            out.append("<|start_of_role|>assistant<|end_of_role|>\n")
    elif name == "megrez":
        for m in chat:
            out.append(f"<|role_start|>{m['role']}<|role_end|>{m['content']}<|turn_end|>")
        if add_ass:
            out.append("<|role_start|>assistant<|role_end|>")
    else:
        raise KeyError(name)
    return "".join(out)


CONVERSATIONS = [
    SHORT,
    [{"role": "user", "content": "  padded\n"}, {"role": "assistant", "content": "\tanswer \x0b"},
     {"role": "user", "content": "next"}],
    [{"role": "system", "content": " a "}, {"role": "system", "content": "b"}, {"role": "user", "content": "q"}],
    [{"role": "user", "content": "only"}],
]


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_every_builtin_matches_llm_chat_apply_template(name):
    t = ChatTemplate.from_name(name)
    assert t.builtin
    for chat in CONVERSATIONS:
        for add_ass in (True, False):
            expected = reference_llm_chat_apply_template(name, chat, add_ass)
            assert t.render(chat, add_generation_prompt=add_ass) == expected


def test_builtins_take_parts_and_none_content():
    t = ChatTemplate.from_name("chatml")
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    msgs = [{"role": "user", "content": parts},
            {"role": "assistant", "content": None}]
    assert t.render(msgs, add_generation_prompt=False) == (
        "<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n")


def test_unknown_builtin_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown chat template 'nope'.*chatml.*llama-2.*zephyr"):
        ChatTemplate.from_name("nope")
    with pytest.raises(ValueError, match="known: .*chatml.*vicuna.*tool_use \\(from the file\\)"):
        ChatTemplate.from_gguf_metadata({"tokenizer.chat_template.tool_use": "x"}, [], name="nope")
    for required in ("chatml", "llama-2", "llama-3", "vicuna", "gemma", "mistral-instruct", "zephyr", "phi-3"):
        assert required in ChatTemplate.builtin_names()


def test_from_gguf_metadata_named_templates():
    meta = {"tokenizer.chat_template": "default", "tokenizer.chat_template.tool_use": "tools {{ bos_token }}",
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.model": "gpt2"}
    tokens = ["<unk>", "<s>", "</s>"]
    assert ChatTemplate.from_gguf_metadata(meta, tokens).render([]) == "default"
    t = ChatTemplate.from_gguf_metadata(meta, tokens, name="tool_use")
    assert t.render([]) == "tools <s>" and not t.add_bos
    assert ChatTemplate.from_gguf_metadata(meta, tokens, name="zephyr").name == "zephyr"
    # no default template: llama.cpp takes the tool_use one before falling back to ChatML
    del meta["tokenizer.chat_template"]
    assert ChatTemplate.from_gguf_metadata(meta, tokens).render([]) == "tools <s>"
    t = ChatTemplate.from_gguf_metadata({}, [])
    assert t.name == "chatml" and t.bos_token == "" and t.eos_token == ""


# --- Jinja environment


def test_sandbox_blocks_attribute_abuse():
    for src in ("{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
                "{{ messages.__class__.__init__.__globals__ }}", "{{ raise_exception.__globals__ }}"):
        with pytest.raises(ChatTemplateError, match="sandbox|unsafe|attribute"):
            ChatTemplate(src).render([])
    with pytest.raises(ChatTemplateError):  # immutable: no list mutation
        ChatTemplate("{% set x = [] %}{{ x.append(1) }}").render([])
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.append({'role': 'x'}) }}").render([{"role": "user", "content": "a"}])


def test_template_errors():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="raised an exception: nope"):
        ChatTemplate("{{ raise_exception('nope') }}").render([])
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate("{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "a"}])


def test_tojson_is_hf_s():
    t = ChatTemplate("{{ tools | tojson }}|{{ tools | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}")
    tools = [{"name": "f<>&'", "desc": "héllo ✓"}]
    out = t.render([], tools=tools, x={"b": 1, "a": 2})
    a, b, c = out.split("|")
    assert a == json.dumps(tools, ensure_ascii=False) and "<>&'" in a and "héllo ✓" in a
    assert b == json.dumps(tools, ensure_ascii=False, indent=2)
    assert c == '{"a": 2, "b": 1}'


def test_environment_features():
    t = ChatTemplate(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% if m.role == 'skip' %}{% continue %}{% endif %}{{ m.role }};{% endfor %}"
        "{% generation %}[{{ bos_token }}{{ eos_token }}]{% endgeneration %}"
        "{{ add_generation_prompt }} {{ tools }} {{ reasoning_effort }} {{ strftime_now('%Y') | length }}",
        "<s>", "</s>")
    msgs = [{"role": "a"}, {"role": "skip"}, {"role": "c"}]
    assert t.render(msgs, reasoning_effort="high") == "a;[<s></s>]True None high 4"
    # trim_blocks / lstrip_blocks, as HF
    t = ChatTemplate("  {% if true %}\nX\n  {% endif %}\nY")
    assert t.render([]) == "X\nY"


def test_apply_llama_cpp_semantics():
    src = ("{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
           "{{ enable_thinking }} {{ add_generation_prompt is defined }} {{ tools is defined }} "
           "{{ date_string | length > 0 }} {{ extra }}")
    t = ChatTemplate(src, "<s>", "</s>", add_bos=True)
    msgs = [{"role": "developer", "content": "d"}, {"role": "user", "content": None}]
    assert t.apply(msgs, add_generation_prompt=False, extra=1) == "system:d;user:;True False False True 1"
    assert t.apply(msgs, enable_thinking=False, tools=[{"x": 1}], extra=2) == "system:d;user:;False True True True 2"
    # BOS / EOS text stripped only when the vocab adds them
    t = ChatTemplate("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>", add_bos=True, add_eos=True)
    assert t.apply([]) == "x" and t.render([]) == "<s>x</s>"
    t = ChatTemplate("{{ bos_token }}x{{ eos_token }}", "<s>", "</s>")
    assert t.apply([]) == "<s>x</s>"
    # gpt-oss templates keep the developer role
    t = ChatTemplate("<|channel|>{% for m in messages %}{{ m.role }}{% endfor %}")
    assert t.apply([{"role": "developer", "content": "d"}]) == "<|channel|>developer"


def test_apply_merges_system_into_the_next_message_when_the_template_drops_it():
    t = ChatTemplate("{% for m in messages %}{% if m.role != 'system' %}[{{ m.role }}:{{ m.content }}]{% endif %}"
                     "{% endfor %}")
    assert not t.caps["supports_system_role"]
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert t.apply(msgs) == "[user:S\nU][assistant:A]"
    assert t.apply([{"role": "system", "content": "S"}]) == ""
    assert t.render(msgs) == "[user:U][assistant:A]"  # render is HF's: no polyfill
