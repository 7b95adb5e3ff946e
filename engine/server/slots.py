"""A model's free slots, handed out by the prompt they already hold (the server's prefix cache).

Each slot keeps the KV of the last request it served (its prompt and answer, `Engine.cached_tokens`)
after the request ends. A new request takes the free slot whose cached tokens share the longest
prefix with its prompt (the same system prompt, the same conversation one turn later), so only the
rest is computed (Engine._prepare_cache truncates the slot's cache to the shared prefix); with no
useful prefix anywhere, the least recently used free slot, whose cache is the one evicted (LRU).
llama-server does the same with its slots (`--slot-prompt-similarity`); vLLM shares blocks between
running sequences as well, which regions per slot (engine/batching.py) do not: a prefix held by a busy
slot is not reused until that slot is free.

Matching is by whole tokens. A request that opts out (`cache_prompt: false`) takes the least recently
used slot and computes its whole prompt.
"""

from __future__ import annotations

import asyncio
import itertools

from engine.generate import common_prefix


class SlotPool:
    """The interface of the asyncio.Queue it replaces (`get`, `put_nowait`, `qsize`), with a hint."""

    def __init__(self, engines):
        self._free: list = []
        self._used_at: dict[int, int] = {}
        self._clock = itertools.count()
        self._waiters: list[tuple[asyncio.Future, list | None]] = []
        for e in engines:
            self.put_nowait(e)

    def qsize(self) -> int:
        return len(self._free)

    def _pick(self, prompt):
        if prompt:
            shared, best = max(((common_prefix(e.cached_tokens, prompt), -self._used_at[id(e)]), e)
                               for e in self._free)
            if shared[0] > 0:
                return best
        return min(self._free, key=lambda e: self._used_at[id(e)])

    async def get(self, prompt: list[int] | None = None):
        """A free slot, the one holding the longest prefix of `prompt` (token ids) if any, else the
        least recently used; waits (first come, first served) while none is free."""
        if self._free and not self._waiters:
            return self._take(prompt)
        fut = asyncio.get_running_loop().create_future()
        entry = (fut, prompt)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif fut.done() and not fut.cancelled():
                self.put_nowait(fut.result())  # handed a slot while being cancelled: give it back
            raise

    def _take(self, prompt):
        e = self._pick(prompt)
        self._free.remove(e)
        return e

    def put_nowait(self, engine):
        self._used_at[id(engine)] = next(self._clock)
        self._free.append(engine)
        while self._waiters and self._free:
            fut, prompt = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(self._take(prompt))
