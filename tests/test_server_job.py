"""engine/server/job.py: a generation's pieces cross from its worker thread to the event loop; a reply
that is not streamed takes only its finished completions across (no wake-up of the loop a token)."""

import asyncio
import threading

from engine.engine import Completion, Piece
from engine.generate import Timings
from engine.server.job import Job


class _Slots:
    """A model's free slots as Job takes and returns them (engine/server/slots.py's interface)."""

    def __init__(self):
        self.q: asyncio.Queue = asyncio.Queue()
        self.q.put_nowait("slot")

    async def get(self, prompt):
        return await self.q.get()

    def put_nowait(self, engine):
        self.q.put_nowait(engine)


class _Model:
    def __init__(self):
        self.waiting = self.active = 0
        self.free = _Slots()


def _pieces(n: int, seen: list, closed: threading.Event):
    def make_iter(engine):
        try:
            for i in range(n):
                seen.append(i)
                yield Piece(f"t{i}", i)
            done = Completion("".join(f"t{i}" for i in range(n)), list(range(n)), "length", 3, Timings())
            yield Piece("", None, "length", done)
        finally:
            closed.set()
    return make_iter


async def _slot_back(model):
    """Wait (up to a second) for the worker's slot to come back through the event loop."""
    for _ in range(100):
        if model.active == 0:
            return
        await asyncio.sleep(0.01)


async def _collect(final_only: bool, n: int = 5):
    seen, closed = [], threading.Event()
    model = _Model()
    job = Job(model, _pieces(n, seen, closed), final_only=final_only)
    await job.start()
    got = [p async for p in job.pieces()]
    await _slot_back(model)
    return got, seen, closed.is_set(), model


def test_a_stream_gets_every_piece_in_order():
    got, seen, closed, model = asyncio.run(_collect(final_only=False))
    assert [p.text for p in got] == ["t0", "t1", "t2", "t3", "t4", ""]
    assert got[-1].completion.text == "t0t1t2t3t4" and seen == [0, 1, 2, 3, 4] and closed
    assert model.active == 0 and model.free.q.qsize() == 1


def test_a_reply_not_streamed_gets_only_its_completion():
    """The worker still runs the whole generation; only the completion reaches the event loop."""
    got, seen, closed, model = asyncio.run(_collect(final_only=True))
    assert len(got) == 1 and got[0].completion is not None and got[0].completion.text == "t0t1t2t3t4"
    assert seen == [0, 1, 2, 3, 4] and closed
    assert model.active == 0 and model.free.q.qsize() == 1


def test_a_reply_not_streamed_stops_when_cancelled():
    """A client gone (the cancel flag) stops the worker at its next piece, streamed or not, and frees the slot."""
    async def run():
        seen, closed = [], threading.Event()
        model = _Model()
        gate, proceed = threading.Event(), threading.Event()

        def make_iter(engine):
            try:
                for i in range(10_000):
                    seen.append(i)
                    if i == 3:  # the client goes away while the generation runs
                        gate.set()
                        proceed.wait(5)
                    yield Piece("x", i)
            finally:
                closed.set()
        job = Job(model, make_iter, final_only=True)
        await job.start()
        await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        job.cancel.set()
        proceed.set()
        await asyncio.get_running_loop().run_in_executor(None, closed.wait, 5)
        await _slot_back(model)
        return seen, closed.is_set(), model
    seen, closed, model = asyncio.run(run())
    assert closed and seen == [0, 1, 2, 3] and model.active == 0 and model.free.q.qsize() == 1
