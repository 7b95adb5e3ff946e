"""engine/server/job.py: a generation's pieces cross from its worker thread to the event loop; a reply
that is not streamed takes only its finished completions across (no wake-up of the loop a token)."""

import asyncio
import threading
import time

import pytest

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


def test_pieces_that_arrive_together_come_in_one_batch_and_an_error_after_them():
    async def run():
        model = _Model()
        go = threading.Event()

        def make_iter(engine):
            go.wait(5)
            yield Piece("a", 1)
            yield Piece("b", 2)
            raise ValueError("the model failed")
        job = Job(model, make_iter)
        await job.start()
        got = []
        go.set()
        await asyncio.sleep(0.2)  # both pieces and the error are handed over before the reader looks
        with pytest.raises(ValueError, match="the model failed"):
            async for batch in job.batches():
                got.append([p.text for p in batch])
        await _slot_back(model)
        return got, job.cancel.is_set()
    got, cancelled = asyncio.run(run())
    assert got == [["a", "b"]] and cancelled


def test_a_slow_reader_holds_the_worker_at_the_buffer():
    """The worker waits once `buffer` pieces wait for the reader, and goes on when they are read."""
    async def run():
        model, seen = _Model(), []

        def make_iter(engine):
            for i in range(10):
                seen.append(i)
                yield Piece(str(i), i)
        job = Job(model, make_iter, buffer=3)
        await job.start()
        await asyncio.sleep(0.3)
        held = len(seen)
        texts = [p.text async for p in job.pieces()]
        await _slot_back(model)
        return held, texts
    held, texts = asyncio.run(run())
    assert held == 4 and texts == [str(i) for i in range(10)]  # 3 handed over, the 4th waiting for room


def _event_stream(make_iter, receive):
    """An EventStream of a Job over `make_iter`, driven with a fake ASGI receive; (messages sent, job)."""
    from engine.server.sse import EventStream

    async def run():
        model, sent = _Model(), []
        job = Job(model, make_iter)
        await job.start()

        async def send(message):
            sent.append(message)
        stream = EventStream(job, lambda p: f"data: {p.text}\n\n", lambda: "data: end\n\n",
                             lambda e: f"data: error {e}\n\n", opening="data: open\n\n")
        await stream(None, receive, send)
        await _slot_back(model)
        return sent, job, model
    return asyncio.run(run())


def test_an_event_stream_sends_its_opening_the_pieces_and_its_end():
    async def never():
        await asyncio.sleep(3600)
    sent, job, model = _event_stream(_pieces(3, [], threading.Event()), never)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    body = b"".join(m["body"] for m in sent[1:]).decode()
    assert body == "data: open\n\ndata: t0\n\ndata: t1\n\ndata: t2\n\ndata: \n\ndata: end\n\n"
    assert sent[-1]["more_body"] is False and all(m["more_body"] for m in sent[1:-1]) and model.active == 0


def test_an_event_stream_ends_with_the_generations_error():
    def failing(engine):
        yield Piece("x", 1)
        raise RuntimeError("kernel fault")

    async def never():
        await asyncio.sleep(3600)
    sent, job, model = _event_stream(failing, never)
    body = b"".join(m["body"] for m in sent[1:]).decode()
    assert body.endswith("data: x\n\ndata: error kernel fault\n\n") and sent[-1]["more_body"] is False


def test_an_event_stream_whose_client_left_stops_the_generation():
    closed, seen = threading.Event(), []

    def endless(engine):
        try:
            for i in range(100_000):
                seen.append(i)
                time.sleep(0.001)
                yield Piece("y", i)
        finally:
            closed.set()

    async def leaves():
        await asyncio.sleep(0.1)
        return {"type": "http.disconnect"}
    sent, job, model = _event_stream(endless, leaves)
    assert closed.wait(5) and job.cancel.is_set() and len(seen) < 100_000 and model.active == 0
    assert sent[-1].get("more_body", True)  # nothing was ended for a client that is gone
