"""One generation running off the event loop: a worker thread per request, its pieces crossing to the
event loop through a queue, so /health and other requests never wait on a running generation. A client
that goes away sets the job's cancel flag; its worker stops at the next piece and frees the slot."""

from __future__ import annotations

import asyncio
import threading


class Job:
    """One generation in a worker thread; `pieces()` yields its Pieces on the event loop."""

    _END = object()

    def __init__(self, model, make_iter, buffer: int = 64, prompt: list[int] | None = None, final_only: bool = False):
        """`prompt`: the token ids the generation starts from, to pick the slot that holds most of
        them (engine/server/slots.py); None takes the least recently used slot. `final_only`: only the
        pieces that carry a finished completion cross to the event loop (a reply that is not
        streamed): no wake-up of the loop a token, whose Python would wait for the GIL with the
        generating thread between two forward passes (a lone SmolLM2 reply's gap between passes
        ~0.31 -> ~0.2 ms)."""
        self.model, self.make_iter, self.prompt, self.final_only = model, make_iter, prompt, final_only
        self.cancel = threading.Event()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.room = threading.Semaphore(buffer)  # pieces a slow reader lets pile up, at most
        self.loop = asyncio.get_running_loop()

    async def start(self):
        m = self.model
        m.waiting += 1
        try:
            self.engine = await m.free.get(self.prompt)
        finally:
            m.waiting -= 1
        m.active += 1
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        def call(fn, *args):  # after a shutdown cancelled the request the loop is closed: no one to tell
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

        put = lambda x: call(self.queue.put_nowait, x)  # noqa: E731

        def room() -> bool:  # wait while the reader is `buffer` pieces behind; False once cancelled
            while not self.room.acquire(timeout=0.1):
                if self.cancel.is_set():
                    return False
            return True

        it = None
        try:
            it = self.make_iter(self.engine)
            for piece in it:
                if self.cancel.is_set():
                    break
                if self.final_only and piece.completion is None:
                    continue
                if not room():
                    break
                put(piece)
        except Exception as e:  # noqa: BLE001 - reported to the client, the server goes on
            put(e)
        finally:
            if it is not None and hasattr(it, "close"):
                try:
                    it.close()
                except Exception:  # noqa: BLE001
                    pass
            put(self._END)

            def release():
                self.model.active -= 1
                self.model.free.put_nowait(self.engine)

            call(release)

    async def pieces(self):
        try:
            while True:
                item = await self.queue.get()
                if item is self._END:
                    return
                if isinstance(item, Exception):
                    raise item
                self.room.release()
                yield item
        finally:
            self.cancel.set()
