"""What a server owner bounds: body size, tokens per request, requests at once and waiting, time.

Each limit is one small piece that the request path calls, so that a scheduler can take it over:

* `BodyLimit`: an ASGI middleware that answers 413 before the body is read (Content-Length) or as soon
  as a chunked body passes the limit, so a 100 MB upload never reaches the JSON parser; and 431 for
  a request head of more than `MAX_HEADERS` fields or `MAX_HEADER_BYTES` (cpp-httplib, under
  llama-server, refuses past 100 fields of 8 KB).
* `cap_max_tokens`: llama-server's `-n/--n-predict`, the default and the ceiling of `max_tokens`.
* `Admission`: how many requests of a model run at once and how many may wait for their turn; past
  that a 503 with `Retry-After`, as a load balancer expects, instead of an unbounded queue.
* `ServerLimits.request_timeout`: the most a request may take; then it is cancelled (504).

The idle-client timeout (llama-server's `--timeout`) lives in the HTTP protocol (engine/server/http.py);
a slow stream reader is bounded by the stream buffer of each request (job.Job) and by that timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from dataclasses import dataclass


@dataclass
class ServerLimits:
    max_body_bytes: int = 32 * 2**20   # --max-body-size: a request body larger than this gets a 413
    n_predict: int = -1                # llama-server's -n: default and ceiling of max_tokens (-1: none)
    max_concurrent: int = 0            # --max-concurrent-requests per model (0: as many as it has slots)
    max_queue: int = 64                # --max-queue: requests waiting for a model beyond those; more: 503
    request_timeout: float = 0.0       # --request-timeout seconds for one request (0: none)
    idle_timeout: float = 600.0        # llama-server's -to/--timeout: a client silent this long is dropped
    stream_buffer: int = 64            # pieces a stream keeps for a client that reads slowly
    retry_after: int = 1               # seconds a 503 tells the client to wait


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'32M', '512k', '1g', '1048576' -> bytes (binary multiples, as llama.cpp's sizes)."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (a number of bytes, or with K, M or G)")
    return int(float(m[1]) * 1024 ** " kmgt".index(m[2].lower() or " "))


def error_body(message: str, type_: str, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets OpenAI's error JSON with 413 and the connection
    is closed. A declared Content-Length is judged before any byte of the body is read; a chunked body
    as it arrives (the handler then sees a disconnect, and nothing it sends goes out)."""

    MAX_HEADERS = 256
    MAX_HEADER_BYTES = 64 * 1024

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send, status: int = 413, message: str | None = None):
        body = error_body(message or f"request body is larger than the server's limit of {self.max_bytes} bytes "
                          "(--max-body-size)", "invalid_request_error",
                          "request_too_large" if status == 413 else "headers_too_large")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        if len(headers) > self.MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > self.MAX_HEADER_BYTES:
            return await self._reject(send, 431, f"request has {len(headers)} header fields; at most {self.MAX_HEADERS} "
                                                 f"fields of {self.MAX_HEADER_BYTES} bytes in all are accepted")
        if not self.max_bytes:
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None  # h11 refuses such a request before it gets here
                if declared is not None and declared > self.max_bytes:
                    return await self._reject(send)
        state = {"seen": 0, "over": False, "started": False}

        async def limited_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    if not state["started"]:
                        state["started"] = True
                        await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise  # the handler's own failure; only the disconnect we caused is ours to swallow


def cap_max_tokens(max_tokens: int, n_predict: int) -> int:
    """llama-server's -n: a request without max_tokens (-1) gets n_predict, one asking for more gets
    n_predict (its finish_reason is then "length"); n_predict -1 leaves requests as they are."""
    if n_predict is None or n_predict < 0:
        return max_tokens
    return n_predict if max_tokens < 0 else min(max_tokens, n_predict)


class Busy(Exception):
    """The model's queue is full: the client should come back after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Admission:
    """Requests of one model: at most `capacity` running, at most `max_queue` waiting in arrival order.

    `acquire()` returns when the request may run, raises `Busy` when the queue is full; `release()`
    hands the place to the oldest waiter. A waiter that gives up (client gone, timeout) leaves the queue;
    one that was handed a place as it gave up passes it on, so no place is ever lost."""

    def __init__(self, capacity: int, max_queue: int, retry_after: int = 1):
        self.capacity, self.max_queue, self.retry_after = max(1, capacity), max(0, max_queue), retry_after
        self.running = 0
        self.waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self.waiters if not f.done())

    async def acquire(self):
        if self.running < self.capacity and not self.waiting:
            self.running += 1
            return
        if self.waiting >= self.max_queue:
            raise Busy(f"the server is busy: {self.running} requests running and {self.waiting} waiting "
                       f"(--max-queue {self.max_queue}); retry after {self.retry_after} s", self.retry_after)
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a place while giving up: pass it on
            else:
                fut.cancel()
                try:
                    self.waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self):
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place goes straight to the oldest waiter
                return
        self.running -= 1
