"""Serving the app over HTTP: uvicorn with an idle-client timeout and a shutdown that exits 0.

Two things uvicorn does not do by itself:

* A client that opens a connection and sends nothing, trickles its request a byte at a time, or stops
  reading a response, would hold its connection (and behind a stream, a model slot) forever. With
  llama-server's `-to/--timeout N`, a request must arrive whole within N seconds of the connection
  being ready for it, and a response that the client does not read for N seconds is dropped.
* On SIGTERM uvicorn stops accepting, lets in-flight requests finish for `--timeout-graceful-shutdown`
  seconds, cancels the rest, and then raises SIGTERM again in itself, so the process dies by the
  signal. A server told to stop that stopped cleanly exits 0 here (what systemd and Kubernetes expect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C parser (uvicorn[standard]); h11 is its pure-Python fallback
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency
    HttpToolsProtocol = None


class IdleTimeout:
    """A watchdog mixed into uvicorn's HTTP protocols (h11's or httptools'): a connection is aborted when
    a request has been awaited for longer than `timeout` seconds without arriving whole (no request, a
    trickled head, a stalled body), or when its response could not be written for `timeout` seconds (a
    client that stopped reading). A running request that simply takes long is not idle: that is the
    request timeout's job."""

    timeout: float = 600.0

    def connection_made(self, transport):
        super().connection_made(transport)
        self._reading_since = self.loop.time()
        self._write_paused_since = None
        self._watch = None
        if self.timeout and self.timeout > 0:
            self._arm()

    def _arm(self):
        self._watch = self.loop.call_later(max(0.05, min(1.0, self.timeout / 4)), self._check)

    def _awaiting_request(self) -> bool:
        c = self.cycle
        return c is None or c.response_complete or c.more_body

    def _check(self):
        if self.transport.is_closing():
            return
        now = self.loop.time()
        stalled_read = self._awaiting_request() and now - self._reading_since > self.timeout
        stalled_write = self._write_paused_since is not None and now - self._write_paused_since > self.timeout
        if stalled_read or stalled_write:
            self.transport.abort()  # close() would wait for a buffer the client never drains
            return
        self._arm()

    def on_response_complete(self):
        self._reading_since = self.loop.time()  # the next request's time starts now
        super().on_response_complete()

    def pause_writing(self):
        self._write_paused_since = self.loop.time()
        super().pause_writing()

    def resume_writing(self):
        self._write_paused_since = None
        super().resume_writing()

    def connection_lost(self, exc):
        if self._watch is not None:
            self._watch.cancel()
        super().connection_lost(exc)


class OffersDirectChunks:
    """Mixed into uvicorn's httptools protocol: each request's scope carries the extension
    "engine.direct_chunks", a callable that gives a streamed reply the socket for its generation
    thread's chunks once its head is out (engine/server/direct_write.py), or None where that is not safe."""

    def on_message_begin(self):
        super().on_message_begin()
        self.scope.setdefault("extensions", {})["engine.direct_chunks"] = self._direct_chunks

    def _direct_chunks(self):
        from .direct_write import DirectChunks

        return DirectChunks.of(self)


# uvicorn's two HTTP/1.1 implementations with the watchdog. httptools (C) is the default, as in uvicorn's
# own "auto": every streamed token goes through the protocol's send on the event loop, whose Python holds
# the GIL the compute thread needs between kernels; with httptools the event loop's CPU per token of a
# lone stream measured 0.25-0.26 ms against h11's 0.28-0.30 (SmolLM2, 2 vCPUs).
PROTOCOLS = {"h11": type("H11IdleTimeout", (IdleTimeout, H11Protocol), {})}
if HttpToolsProtocol is not None:
    PROTOCOLS["httptools"] = type("HttpToolsIdleTimeout", (IdleTimeout, OffersDirectChunks, HttpToolsProtocol), {})
DEFAULT_PROTOCOL = "httptools" if "httptools" in PROTOCOLS else "h11"


class _Server(uvicorn.Server):
    """uvicorn's server without re-raising the stop signal after a graceful shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class _QuietCancel(logging.Filter):
    """Past the grace period uvicorn cancels the requests still running and logs each as an
    "Exception in ASGI application" with the CancelledError's traceback: that is the shutdown working
    as asked (it says so in its own line before), not a failure, so its traceback is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def serve(app, host: str, port: int, *, idle_timeout: float = 600.0, graceful_shutdown: float = 10.0,
          log_level: str = "warning", http: str = DEFAULT_PROTOCOL) -> int:
    """Serve `app` until SIGINT/SIGTERM; 0 after a clean stop. `http`: "httptools" or "h11"."""
    if http not in PROTOCOLS:
        raise ValueError(f"unknown HTTP implementation {http!r}; available: {', '.join(PROTOCOLS)}")
    protocol = type("IdleTimeoutProtocol", (PROTOCOLS[http],), {"timeout": float(idle_timeout or 0)})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol, access_log=False,
                            timeout_graceful_shutdown=graceful_shutdown if graceful_shutdown >= 0 else None)
    server = _Server(config)
    logging.getLogger("uvicorn.error").addFilter(_QuietCancel())
    server.run()
    return 0 if server.started else 1
