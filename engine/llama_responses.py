"""The dicts llama-cpp-python's `Llama` returns, built from this engine's results.

Shapes follow llama-cpp-python 0.3.x (`llama_cpp/llama_types.py`, `llama.py`, `llama_chat_format.py`),
which follow OpenAI's: a completion is {id, object, created, model, choices, usage}; a streamed
completion is chunks without `usage`, the last one carrying `finish_reason`; chat chunks start with a
`{"role": "assistant"}` delta and end with an empty delta. Keys are the same as llama-cpp-python's so
code reading them needs no change (tests/test_llama_compat.py compares the key trees).

Logprob records come from `Engine.generate(logprobs=k)`: {"id", "token", "logprob", "bytes",
"top_logprobs": [{"id", "token", "logprob", "bytes"}, ...]} per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Head:
    """What every dict of one response shares: its id, creation time and model name."""

    id: str
    created: int
    model: str

    def fields(self, obj: str, chat: bool = False) -> dict:
        # llama-cpp-python names a chat completion after the text completion it ran: "chat" + "cmpl-..."
        return {"id": ("chat" if chat else "") + self.id, "object": obj, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# --- text completions

def completion(head: Head, text: str, finish_reason: str, logprobs: dict | None, usage_: dict) -> dict:
    return {**head.fields("text_completion"),
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage_}


def completion_chunk(head: Head, text: str, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {**head.fields("text_completion"),
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}


def _top_dict(entry: dict) -> dict[str, float]:
    """llama-cpp-python's top_logprobs entry: {token text: logprob} of the k best, plus the chosen token."""
    top = {t["token"]: t["logprob"] for t in entry["top_logprobs"]}
    top[entry["token"]] = entry["logprob"]
    return top


def completion_logprobs(entries: list[dict], text_offset: int) -> dict:
    """OpenAI's legacy logprobs object; `text_offset` is where the first token's text starts
    (in characters of prompt + completion, as llama-cpp-python counts)."""
    out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for e in entries:
        out["tokens"].append(e["token"])
        out["text_offset"].append(text_offset)
        out["token_logprobs"].append(e["logprob"])
        out["top_logprobs"].append(_top_dict(e))
        text_offset += len(e["token"])
    return out


def echo_logprobs(prompt_entries: list[dict], entries: list[dict]) -> dict:
    """With echo=True: the prompt's tokens come first, the very first one without a logprob (nothing
    predicts it), as OpenAI and llama-cpp-python do."""
    out = completion_logprobs(prompt_entries + entries, 0)
    if prompt_entries:
        out["token_logprobs"][0] = None
        out["top_logprobs"][0] = None
    return out


# --- chat completions

def chat_logprobs(entries: list[dict] | None) -> dict | None:
    if entries is None:
        return None

    def rec(token: str, logprob: float, b) -> dict:
        return {"token": token, "logprob": logprob, "bytes": b}

    content = []
    for e in entries:
        tops = {t["token"]: rec(t["token"], t["logprob"], t["bytes"]) for t in e["top_logprobs"]}
        tops.setdefault(e["token"], rec(e["token"], e["logprob"], e["bytes"]))
        content.append({**rec(e["token"], e["logprob"], e["bytes"]), "top_logprobs": list(tops.values())})
    return {"content": content, "refusal": None}


def chat_message(message: dict) -> dict:
    """The reply as llama-cpp-python shapes it ({role, content}; with tool calls also the deprecated
    `function_call`, the first call, as it gives), plus `reasoning_content` for models that separate
    their reasoning (gpt-oss)."""
    out = {"role": "assistant", "content": message.get("content")}
    if message.get("reasoning_content"):
        out["reasoning_content"] = message["reasoning_content"]
    if message.get("tool_calls"):
        out["content"] = out["content"] or None  # a reply that is only calls has no content (OpenAI: null)
        out["tool_calls"] = message["tool_calls"]
        out["function_call"] = dict(message["tool_calls"][0]["function"])
    return out


def chat_completion(head: Head, message: dict, finish_reason: str, logprobs: dict | None, usage_: dict) -> dict:
    return {**head.fields("chat.completion", chat=True),
            "choices": [{"index": 0, "message": chat_message(message), "logprobs": logprobs,
                         "finish_reason": finish_reason}],
            "usage": usage_}


def chat_chunk(head: Head, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> dict:
    return {**head.fields("chat.completion.chunk", chat=True),
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_chunks(head: Head, pieces) -> Iterator[dict]:
    """`Engine.chat(stream=True)` pieces -> chat chunks: the role first, then content (or, for models
    that separate them, `reasoning_content`), then an empty delta with the finish reason.

    Tool calls stream as OpenAI's deltas (id and name first, then argument fragments, by index), as
    llama-server sends them; llama-cpp-python repeats the id, name and a `function_call` in every
    chunk instead, which OpenAI's own stream accumulator would concatenate into a wrong name."""
    yield chat_chunk(head, {"role": "assistant"})
    n_calls = 0
    for p in pieces:
        if p.completion is not None:
            yield chat_chunk(head, {}, p.completion.finish_reason)
        elif p.kind == "tool_call":
            if p.name and not p.text:
                call = {"index": n_calls, "id": p.call_id or f"call_{n_calls}", "type": "function",
                        "function": {"name": p.name, "arguments": ""}}
                n_calls += 1
                yield chat_chunk(head, {"tool_calls": [call]})
            elif p.text:
                yield chat_chunk(head, {"tool_calls": [{"index": n_calls - 1, "function": {"arguments": p.text}}]})
        elif p.text:
            key = "reasoning_content" if p.kind == "reasoning" else "content"
            yield chat_chunk(head, {key: p.text}, logprobs=chat_logprobs(p.logprobs))


# --- embeddings

def embeddings(model: str, vectors: list, n_tokens: int) -> dict:
    return {"object": "list",
            "data": [{"object": "embedding", "embedding": v, "index": i} for i, v in enumerate(vectors)],
            "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

