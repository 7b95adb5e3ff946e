"""One generation running off the event loop: a worker thread per request, its pieces crossing to the
event loop, so /health and other requests never wait on a running generation. A client that goes away
sets the job's cancel flag; its worker stops at the next piece and frees the slot.

The crossing is a deque and one waiting future rather than an asyncio.Queue and a semaphore: a lone
stream crosses once a token, and on a 2-vCPU machine the event loop's Python for each token runs
between two forward passes (the next pass waits for the GIL). The deque's append is atomic under the
GIL; the worker then schedules `_wake` on the loop, which resolves the reader's future if it waits.
The reader takes everything that arrived at once (`batches`), so a stream the loop fell behind on
goes out in one write.

A streamed reply may also let the worker write its pieces to the client itself (`go_direct`,
engine/server/direct_write.py), skipping the loop altogether while the loop holds nothing of the
reply: the loop says so before it waits (`_loop_idle`), the worker writes only then and under
`_direct_lock`, and the loop takes that lock before anything it hands the reader itself (a timeout,
the client gone) so that no write of the worker's can follow it."""

from __future__ import annotations

import asyncio
import collections
import threading

from .direct_write import Unwritten


class Job:
    """One generation in a worker thread; `batches()` / `pieces()` yield its Pieces on the event loop."""

    _END = object()

    def __init__(self, model, make_iter, buffer: int = 64, prompt: list[int] | None = None, final_only: bool = False):
        """`prompt`: the token ids the generation starts from, to pick the slot that holds most of
        them (engine/server/slots.py); None takes the least recently used slot. `buffer`: the pieces a
        slow reader lets pile up, at most; then the worker waits. `final_only`: only the pieces that
        carry a finished completion cross to the event loop (a reply that is not streamed): no wake-up
        of the loop a token, whose Python would wait for the GIL with the generating thread between two
        forward passes (a lone SmolLM2 reply's gap between passes ~0.31 -> ~0.2 ms)."""
        self.model, self.make_iter, self.prompt, self.final_only = model, make_iter, prompt, final_only
        self.buffer = max(1, int(buffer))
        self.cancel = threading.Event()
        self._items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None  # the reader's, while it waits (loop side only)
        self._drained = threading.Event()  # cleared by a worker waiting for room, set by the reader
        self._drained.set()
        self.loop = asyncio.get_running_loop()
        self._direct_lock = threading.Lock()
        self._chunks = self._render = None  # go_direct's, while the worker may write itself
        self._direct_on = self._loop_idle = self._worker_done = False

    async def start(self):
        m = self.model
        m.waiting += 1
        try:
            self.engine = await m.free.get(self.prompt)
        finally:
            m.waiting -= 1
        m.active += 1
        threading.Thread(target=self._run, daemon=True).start()

    def put(self, item):
        """Hand the reader `item` from the event loop: a piece, or an exception it raises (a timeout,
        the model's file changing, the client gone). The worker's own writes stop first."""
        self._stop_direct()
        self._items.append(item)
        self._wake()

    def go_direct(self, chunks, render):
        """(event loop) From now on the worker writes each piece, formatted by `render`, through
        `chunks` (a DirectChunks) itself whenever the loop holds nothing of the reply."""
        with self._direct_lock:
            if self._worker_done:
                chunks.close()
                return
            self._chunks, self._render, self._direct_on = chunks, render, True

    def _stop_direct(self):
        if self._direct_on:
            with self._direct_lock:  # (waits for a write in progress)
                self._direct_on = False

    def _write_direct(self, piece):
        """(worker) `piece` written by this thread if the loop holds nothing of the reply: None when done
        with (written, or nothing to write), else what to hand the loop (the piece, or the bytes of a
        chunk the socket did not take at once: the rest of the reply then goes through the loop)."""
        with self._direct_lock:
            if not (self._direct_on and self._loop_idle and not self._items):
                return piece
            text = self._render(piece)
            if not text:
                return None
            try:
                rest = self._chunks.write(text.encode())
            except OSError:  # the client is gone (its disconnect reaches the loop too)
                self._direct_on = False
                self.cancel.set()
                return None
            if not rest:
                return None
            self._direct_on = False
            return Unwritten(rest)

    def _wake(self):
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _run(self):
        def call(fn, *args):  # after a shutdown cancelled the request the loop is closed: no one to tell
            try:
                self.loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:
                pass

        def put(x):
            self._items.append(x)
            call(self._wake)

        def room() -> bool:  # wait while the reader is `buffer` pieces behind; False once cancelled
            while len(self._items) >= self.buffer:
                self._drained.clear()
                if len(self._items) < self.buffer:  # (the reader emptied it before the clear)
                    break
                self._drained.wait(0.1)
                if self.cancel.is_set():
                    return False
            return True

        it = None
        try:
            it = self.make_iter(self.engine)
            for piece in it:
                if self.cancel.is_set():
                    break
                if piece.completion is None:
                    if self.final_only:
                        continue
                    if self._direct_on:
                        piece = self._write_direct(piece)
                        if piece is None:
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
            with self._direct_lock:
                self._direct_on, self._worker_done = False, True
                if self._chunks is not None:
                    self._chunks.close()
            put(self._END)

            def release():
                self.model.active -= 1
                self.model.free.put_nowait(self.engine)

            call(release)

    async def batches(self):
        """Lists of the pieces that arrived together, in order; an exception handed over is raised
        after the pieces before it. Leaving (the end, an error, the reader gone) sets the cancel flag."""
        items = self._items
        try:
            while True:
                if not items:
                    self._waiter = self.loop.create_future()
                    self._loop_idle = self._direct_on and self._chunks.idle()
                    try:
                        await self._waiter
                    finally:
                        self._loop_idle = False
                        self._waiter = None
                    continue
                batch = []
                while items:
                    item = items.popleft()
                    if item is self._END or isinstance(item, Exception):
                        if batch:
                            yield batch
                        if item is self._END:
                            return
                        raise item
                    batch.append(item)
                if not self._drained.is_set():
                    self._drained.set()
                yield batch
        finally:
            self._reader_left()

    def _reader_left(self):
        """The reader is done (the end, an error, the client gone): the worker stops at its next piece,
        writes nothing more itself, and waits for room no longer."""
        self.cancel.set()
        self._stop_direct()
        self._drained.set()

    async def pieces(self):
        """The pieces one by one (see `batches`)."""
        try:
            async for batch in self.batches():
                for p in batch:
                    yield p
        finally:
            self._reader_left()  # (the inner generator is not closed when this one is)
