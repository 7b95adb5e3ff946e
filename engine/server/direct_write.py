"""A streamed reply's chunks written by its generation thread, straight to the client's socket.

A lone stream on a small model spends most of its time between forward passes handing each token to the
event loop: the worker's wake-up of the loop (an eventfd write, ~30 us on a 2-vCPU VM), the loop's
own wake-up, its Python for the token, then uvicorn's send. All of it holds the GIL that the next
forward pass needs, on the CPUs the pass runs on. Here, once the reply's head has gone out and while
the event loop has nothing of the reply left to write, the worker formats the token's event and
writes it as an HTTP/1.1 chunk itself, with `os.write` on its own duplicate of the socket (the GIL is
released during the write, and the duplicate cannot be closed under it and reused by another
connection).

Only where it is plainly safe: uvicorn's httptools protocol (engine/server/http.py offers this as the
scope extension "engine.direct_chunks"), plain TCP (no TLS), a chunked response, the transport's
buffer empty and writing not paused. Whatever the socket does not take at once goes to the event
loop's transport, and the reply continues through the loop from there (a slow client then gets
uvicorn's flow control and the idle timeout as before). The Job (engine/server/job.py) keeps the
order: the worker writes only while the loop holds none of the reply's bytes, under a lock that the
loop takes before it writes anything the worker did not hand it."""

from __future__ import annotations

import os


class Unwritten:
    """The bytes of a chunk that the generation thread's write left, for the event loop to write first."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


class DirectChunks:
    """The socket of one chunked response, for its generation thread; made on the event loop."""

    def __init__(self, protocol):
        self._protocol = protocol
        self._transport = protocol.transport
        self._fd = os.dup(self._transport.get_extra_info("socket").fileno())

    @classmethod
    def of(cls, protocol) -> "DirectChunks | None":
        """For `protocol`'s current response, once its head is sent; None where direct writes are not safe."""
        cycle, transport = getattr(protocol, "cycle", None), getattr(protocol, "transport", None)
        if cycle is None or transport is None or transport.is_closing() or cycle.disconnected:
            return None
        if not cycle.response_started or cycle.response_complete or not cycle.chunked_encoding:
            return None
        if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("socket") is None:
            return None
        try:
            chunks = cls(protocol)
        except OSError:  # (no descriptor left for the duplicate: the reply goes through the loop)
            return None
        if os.get_blocking(chunks._fd):  # (a loop whose sockets block: a write could stall the worker)
            chunks.close()
            return None
        return chunks

    def idle(self) -> bool:
        """(event loop) Nothing of the response waits in the transport, and the client is reading."""
        p = self._protocol
        return (self._fd >= 0 and not p.flow.write_paused and not p.cycle.disconnected
                and self._transport.get_write_buffer_size() == 0)

    def write(self, data: bytes) -> bytes:
        """(worker) `data` as one HTTP/1.1 chunk; what of the chunk's bytes the socket did not take (b""
        when it took them all). OSError when the connection is gone."""
        frame = b"%x\r\n%b\r\n" % (len(data), data)
        try:
            n = os.write(self._fd, frame)
        except BlockingIOError:
            n = 0
        return frame[n:]

    def write_rest(self, rest: bytes):
        """(event loop) The part of a chunk the worker could not write, through the transport."""
        self._transport.write(rest)

    def close(self):
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
