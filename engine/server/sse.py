"""A streamed reply (server-sent events) written straight from a Job's pieces.

Starlette's StreamingResponse drains an async generator inside a task group that also listens for the
client's disconnect; each event then passes the generator, the task group's task and a `send`. Here
the response itself takes each batch of pieces from the Job (engine/server/job.py), turns it into text
with the endpoint's `render` (plain functions: the endpoint's state in their closure), and sends it in
one write; one watcher task per reply waits for the disconnect. A lone stream's event loop does this
once a token between two forward passes, on the CPUs the passes use -- unless the server offers the
generation thread the socket itself (the scope extension "engine.direct_chunks", engine/server/
direct_write.py): then, while nothing of the reply waits on the loop, the worker formats and writes
each piece, and the loop sees only the end, or whatever the socket did not take at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.responses import Response

from .direct_write import Unwritten

DONE = "data: [DONE]\n\n"


class _Gone(Exception):
    """The client disconnected: nothing more to send."""


class EventStream(Response):
    """`text/event-stream` of a Job: `render(piece) -> str` for each piece (its events, "" for none),
    then `finish() -> str` after the last; an exception from the generation ends the stream with
    `fail(exc) -> str`; `opening`, events sent before the first piece. The client going away stops the Job
    (its cancel flag) at its next piece."""

    media_type = "text/event-stream"

    def __init__(self, job, render: Callable, finish: Callable[[], str], fail: Callable[[Exception], str],
                 headers: dict | None = None, opening: str = ""):
        self.job, self.render, self.finish, self.fail, self.opening = job, render, finish, fail, opening
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            if self.opening:
                await send({"type": "http.response.body", "body": self.opening.encode(), "more_body": True})
            render = self.render
            offer = ((scope or {}).get("extensions") or {}).get("engine.direct_chunks")
            chunks = offer() if offer is not None else None
            if chunks is not None:
                self.job.go_direct(chunks, render)
            try:
                async for batch in self.job.batches():
                    text = []
                    for item in batch:
                        if type(item) is Unwritten:  # the rest of a chunk the worker began, right after it
                            chunks.write_rest(item.data)  # (the worker wrote it with nothing queued: it leads)
                        else:
                            text.append(render(item))
                    text = "".join(text)
                    if text:
                        await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
                tail = self.finish()
            except (_Gone, OSError):  # (an ASGI 2.4 server's send raises OSError once the client left)
                return
            except Exception as e:  # noqa: BLE001 - the stream ends with an error event
                tail = self.fail(e)
            await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})
        finally:
            watcher.cancel()

    async def _watch(self, receive):
        """Wait for the client's disconnect (the request's body was read before the reply started)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.job.put(_Gone())
