"""OpenAI's harmony format (gpt-oss): split a raw completion into reasoning, answer and tool calls.

What gpt-oss writes after the prompt's `<|start|>assistant` is a sequence of messages:

    <|channel|>analysis<|message|>...thinking...<|end|>
    <|start|>assistant<|channel|>final<|message|>...the answer...<|return|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Tokyo"}<|call|>

The `analysis` channel is reasoning, `final` is the answer, and a message with a recipient
(`to=functions.NAME`, in the header before or after the channel) is a tool call whose body is its
JSON arguments. `commentary` without a recipient is a preamble meant for the user: content.

`HarmonyParser` works on text as it streams, in chunks of any size: a special token split across
two chunks (`<|chan` + `nel|>`) is held back until it is whole, so no marker ever leaks into the
content. `parse_harmony(text)` is the one-shot form.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

START, CHANNEL, MESSAGE, END, RETURN, CALL, CONSTRAIN = (
    "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
MARKERS = (START, CHANNEL, MESSAGE, END, RETURN, CALL, CONSTRAIN)
STOP_MARKERS = (RETURN, CALL)          # EOG tokens for gpt-oss: generation stops on them
_MARKER_RE = re.compile("|".join(re.escape(m) for m in MARKERS))
_LONGEST = max(len(m) for m in MARKERS)
_MAX_HEADER = 256                      # a "header" longer than this without <|message|> is plain text


@dataclass
class Delta:
    """A streamed piece: kind is "reasoning", "content" or "tool_call" (text = argument JSON so far;
    `name` and `index` say which call it belongs to)."""

    kind: str
    text: str
    name: str | None = None
    index: int = 0


@dataclass
class HarmonyMessage:
    channel: str | None
    recipient: str | None
    content_type: str | None
    text: str = ""
    done: bool = False

    @property
    def kind(self) -> str:
        if self.recipient:
            return "tool_call"
        return "reasoning" if self.channel == "analysis" else "content"


@dataclass
class HarmonyResult:
    reasoning: str
    content: str
    tool_calls: list[dict]            # OpenAI shape: {"id", "type": "function", "function": {"name", "arguments"}}
    messages: list[HarmonyMessage] = field(default_factory=list)
    stopped_by: str | None = None     # "<|return|>", "<|call|>" or None (truncated / no stop marker)

    @property
    def finish_reason(self) -> str | None:
        """"tool_calls" when the model called a tool, else None (the caller's own reason stands)."""
        return "tool_calls" if self.tool_calls else None


def parse_header(header: str) -> tuple[str | None, str | None, str | None]:
    """(channel, recipient, content_type) from the text between a message's start and <|message|>.
    The header is e.g. `assistant<|channel|>commentary to=functions.x <|constrain|>json`, or
    `assistant to=functions.x<|channel|>commentary json`."""
    channel = recipient = ctype = None
    m = re.search(re.escape(CHANNEL) + r"\s*([^\s<]+)", header)
    if m:
        channel = m.group(1)
    m = re.search(r"\bto=([^\s<]+)", header)
    if m:
        recipient = m.group(1)
    m = re.search(re.escape(CONSTRAIN) + r"\s*([^\s<]+)", header)
    if m:
        ctype = m.group(1)
    elif channel is not None:
        after = header.split(CHANNEL, 1)[1].split()
        rest = [w for w in after[1:] if not w.startswith("to=")]
        if rest:
            ctype = rest[0]
    return channel, recipient, ctype


class HarmonyParser:
    """Streaming parser. `feed(text)` returns the deltas that text completes; `finish()` the result.

    `in_header=True` (the default) is the state after a prompt ending in `<|start|>assistant`:
    the model's first tokens are a header (`<|channel|>analysis`)."""

    def __init__(self, in_header: bool = True):
        self._buf = ""
        self._state = "header" if in_header else "between"
        self._header = ""
        self.messages: list[HarmonyMessage] = []
        self._cur: HarmonyMessage | None = None
        self.stopped_by: str | None = None
        self._n_calls = 0

    # --- streaming
    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        self._buf += text
        while self._buf:
            m = _MARKER_RE.search(self._buf)
            if m is None:
                keep = _partial_marker_len(self._buf)
                chunk, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                self._text(chunk, out)
                break
            self._text(self._buf[:m.start()], out)
            self._buf = self._buf[m.end():]
            self._marker(m.group(0), out)
        return out

    def finish(self) -> HarmonyResult:
        """End of the stream (a stop marker, EOG, or max tokens): whatever is held back is text."""
        rest, self._buf = self._buf, ""
        tail: list[Delta] = []
        self._text(rest, tail)
        if self._state == "header" and self._header and not self.messages:
            # never saw a harmony header: the model answered in plain text
            self.messages.append(HarmonyMessage(None, None, None, self._header.strip(), True))
        if self._cur is not None:
            self.messages.append(self._cur)
            self._cur = None
        return self.result()

    def result(self) -> HarmonyResult:
        msgs = self.messages + ([self._cur] if self._cur is not None else [])
        reasoning = "".join(m.text for m in msgs if m.kind == "reasoning")
        content = "".join(m.text for m in msgs if m.kind == "content")
        calls = []
        for i, m in enumerate(x for x in msgs if x.kind == "tool_call"):
            name = m.recipient.split(".", 1)[1] if m.recipient.startswith("functions.") else m.recipient
            calls.append({"id": f"call_{i}", "type": "function",
                          "function": {"name": name, "arguments": _normalise_json(m.text)}})
        return HarmonyResult(reasoning, content, calls, msgs, self.stopped_by)

    # --- states
    def _text(self, text: str, out: list[Delta]):
        if not text:
            return
        if self._state == "header":
            self._header += text
            if len(self._header) > _MAX_HEADER and MESSAGE not in self._header and not self.messages:
                # not harmony at all: treat everything as content from here on
                self._cur = HarmonyMessage(None, None, None)
                self._state = "content"
                text, self._header = self._header, ""
            else:
                return
        if self._state == "content" and self._cur is not None:
            self._cur.text += text
            kind = self._cur.kind
            name = self._call_name(self._cur) if kind == "tool_call" else None
            out.append(Delta(kind, text, name, self._n_calls - 1 if kind == "tool_call" else 0))
        # text between messages (after <|end|>, before <|start|>) carries nothing

    def _marker(self, marker: str, out: list[Delta]):
        if marker in (CHANNEL, CONSTRAIN):
            if self._state != "header":   # a stray header marker: start a header
                self._close()
                self._state = "header"
            self._header += marker
        elif marker == START:
            self._close()
            self._state, self._header = "header", ""
        elif marker == MESSAGE:
            channel, recipient, ctype = parse_header(self._header)
            self._close()
            self._cur = HarmonyMessage(channel, recipient, ctype)
            if self._cur.kind == "tool_call":
                self._n_calls += 1
                out.append(Delta("tool_call", "", self._call_name(self._cur), self._n_calls - 1))
            self._state, self._header = "content", ""
        elif marker == END:
            self._close()
            self._state = "between"
        elif marker in STOP_MARKERS:
            self._close()
            self.stopped_by = marker
            self._state = "between"

    def _close(self):
        if self._cur is not None:
            self._cur.done = True
            self.messages.append(self._cur)
            self._cur = None

    @staticmethod
    def _call_name(m: HarmonyMessage) -> str:
        return m.recipient.split(".", 1)[1] if m.recipient.startswith("functions.") else m.recipient


def parse_harmony(text: str, in_header: bool = True) -> HarmonyResult:
    p = HarmonyParser(in_header=in_header)
    p.feed(text)
    return p.finish()


def _partial_marker_len(buf: str) -> int:
    """Length of the longest suffix of buf that could begin a marker (held back until it resolves)."""
    for n in range(min(len(buf), _LONGEST - 1), 0, -1):
        if any(m.startswith(buf[-n:]) for m in MARKERS):
            return n
    return 0


def _normalise_json(text: str) -> str:
    """Tool arguments as compact JSON when they parse, else as the model wrote them."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, TypeError):
        return text.strip()
