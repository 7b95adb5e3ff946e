"""The generation loop, as a generator (mlx-lm's `generate_step`): streaming, the CLI, the server and
the benchmarks all sit on `generate_step`.

`generate_step` yields one `Step` per generated token with the timing of the work it took; the
caller decides when to stop (EOG, stop strings, max_tokens) simply by not asking for more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

DEFAULT_BATCH = 256  # prompt tokens per forward pass (bounds activation memory on long prompts)


@dataclass
class Step:
    token: int
    logits: np.ndarray     # (n_vocab,) float32 the token was sampled from
    prompt_ms: float = 0.0  # only on the first step: time to process the prompt
    eval_ms: float = 0.0    # time to produce this token (after the prompt)


@dataclass
class Timings:
    """llama.cpp's `timings` object (server responses, llama_perf_context)."""

    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    cache_n: int = 0

    def as_dict(self) -> dict:
        per = lambda n, ms: (1e3 * n / ms) if ms > 0 else 0.0  # noqa: E731
        return {
            "cache_n": self.cache_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": self.prompt_ms,
            "prompt_per_token_ms": self.prompt_ms / self.prompt_n if self.prompt_n else 0.0,
            "prompt_per_second": per(self.prompt_n, self.prompt_ms),
            "predicted_n": self.predicted_n,
            "predicted_ms": self.predicted_ms,
            "predicted_per_token_ms": self.predicted_ms / self.predicted_n if self.predicted_n else 0.0,
            "predicted_per_second": per(self.predicted_n, self.predicted_ms),
        }


def common_prefix(a, b) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefill(model, cache, tokens, batch: int = DEFAULT_BATCH, last_only: bool = True):
    """Feed `tokens` through the cache in batches; return the logits of the last batch.

    A cache attached to a batch scheduler (engine/batching.py: `cache.run`) hands each batch to the
    scheduler's next step instead, and gets host logits back (only for the last batch)."""
    run = getattr(cache, "run", None)
    logits = None
    for i in range(0, len(tokens), batch):
        chunk = tokens[i:i + batch]
        if run is not None:
            last = i + batch >= len(tokens)
            logits = run(chunk, False, ("last" if last_only else "all") if last else "none")
        else:
            logits = model.forward(chunk, cache, last_only=last_only)
    return logits


def decode(model, cache, token: int) -> np.ndarray:
    """One decode step: the logits (1, n_vocab) of `token` at the cache's next position, on the host.

    A backend that can replay a captured step (CUDA graphs: `decode_graph`) runs it that way when it
    holds the whole model; every other case is a plain forward pass."""
    run = getattr(cache, "run", None)
    if run is not None:  # a slot of a batch scheduler: the token joins its next step
        return run([token], True)
    be = model.place.single
    replay = getattr(be, "decode_graph", None) if be is not None else None
    if replay is not None:
        return replay(model, cache, token)
    return model.place.output.to_numpy(model.forward([token], cache))


def generate_step(model, cache, prompt: list[int], sample, max_tokens: int, batch: int = DEFAULT_BATCH) -> Iterator[Step]:
    """Process `prompt` (the tokens not yet in `cache`), then yield up to `max_tokens` sampled tokens.

    sample: callable(logits (n_vocab,) f32) -> token id.
    """
    if not prompt:
        raise ValueError("nothing to evaluate: the prompt is empty and nothing is cached")
    t0 = time.perf_counter()
    logits = model.place.output.to_numpy(prefill(model, cache, prompt, batch))[-1]
    prompt_ms = (time.perf_counter() - t0) * 1e3
    token = None
    for i in range(max_tokens):
        t0 = time.perf_counter()
        if token is not None:  # the first token comes from the prompt's logits
            logits = decode(model, cache, token)[-1]
        token = int(sample(logits))
        yield Step(token, logits, prompt_ms if i == 0 else 0.0, (time.perf_counter() - t0) * 1e3)


@dataclass
class Utf8Stream:
    """Turns token byte pieces into text without ever cutting a multi-byte character."""

    pending: bytes = b""
    text: list[str] = field(default_factory=list)

    def push(self, piece: bytes) -> str:
        data = self.pending + piece
        # keep back an incomplete UTF-8 sequence at the end (at most 3 bytes)
        cut = len(data)
        for back in range(1, min(4, len(data)) + 1):
            b = data[-back]
            if b & 0xC0 == 0x80:      # continuation byte: keep looking for the lead byte
                continue
            need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
            if need > back:
                cut = len(data) - back
            break
        self.pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        out, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return out
