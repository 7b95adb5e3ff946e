"""engine/server/direct_write.py: a streamed reply's generation thread writes its chunks to the socket
itself while the event loop holds nothing of the reply, and whatever the socket does not take goes
through the loop. The bytes on the wire stay one valid chunked body, in order, however the writes
split between the two threads."""

import asyncio
import select
import socket
import threading
import time
from types import SimpleNamespace
from unittest import mock

from engine.engine import Completion, Piece
from engine.generate import Timings
from engine.server.direct_write import DirectChunks
from engine.server.job import Job
from engine.server.sse import EventStream
from test_server_job import _Model, _slot_back


class _Transport:
    """What DirectChunks asks of uvloop's transport; `write` sends everything before it returns."""

    def __init__(self, sock):
        self.sock, self.loop_writes = sock, 0

    def get_extra_info(self, name):
        return {"socket": self.sock, "sslcontext": None}.get(name)

    def is_closing(self):
        return False

    def get_write_buffer_size(self):
        return 0

    def write(self, data: bytes):
        self.loop_writes += 1
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)


def _protocol(sock):
    transport = _Transport(sock)
    cycle = SimpleNamespace(disconnected=False, response_started=True, response_complete=False, chunked_encoding=True)
    return SimpleNamespace(transport=transport, cycle=cycle, flow=SimpleNamespace(write_paused=False))


def _chunked_body(data: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body, which must end with its last chunk."""
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        n = int(data[i:j], 16)
        if n == 0:
            assert data[j:] == b"\r\n\r\n"
            return b"".join(out)
        out.append(data[j + 2:j + 2 + n])
        assert data[j + 2 + n:j + 4 + n] == b"\r\n"
        i = j + 4 + n


def _stream(n: int, size: int, stall: bool):
    """An EventStream of n pieces of `size` bytes over a socket pair with a small send buffer, read by a
    thread (`stall`: that stops reading for a while); (the payload read, the expected one, what each of
    the worker's writes left, the loop's writes, the model)."""
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.setblocking(False)
    received = []

    def read():  # with `stall`, stops once for 0.2 s after 16 KB: the socket's buffer fills
        got = 0
        while True:
            b = client.recv(4096)
            if not b:
                return
            received.append(b)
            if b"".join(received[-2:]).endswith(b"0\r\n\r\n"):
                return
            if stall and got < 16384 <= got + len(b):
                time.sleep(0.2)
            got += len(b)
    reader = threading.Thread(target=read)
    reader.start()
    proto = _protocol(server)
    direct_writes = []

    class Counted(DirectChunks):
        def write(self, data):
            rest = super().write(data)
            direct_writes.append(len(rest))
            return rest

    texts = [f"{i:04d}" + "x" * (size - 4) for i in range(n)]

    def make_iter(engine):
        for i, t in enumerate(texts):
            yield Piece(t, i)
            time.sleep(0.0005)
        yield Piece("", None, "length", Completion("".join(texts), list(range(n)), "length", 3, Timings()))

    async def run():
        model = _Model()
        job = Job(model, make_iter)
        await job.start()
        await asyncio.sleep(0.01)  # pieces queued before the reply starts: the loop sends them, then the worker

        async def send(message):
            if message["type"] == "http.response.body":
                body, more = message.get("body", b""), message.get("more_body", False)
                proto.transport.write((b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n"))

        async def never():
            await asyncio.sleep(3600)
        def render(p):  # (slow enough that the loop is still busy with a batch when the worker's next piece comes)
            time.sleep(0.0002)
            return f"[{p.text}]"
        stream = EventStream(job, render, lambda: "[end]", lambda e: f"[error {e}]", opening="[open]")
        scope = {"extensions": {"engine.direct_chunks": lambda: Counted.of(proto)}}
        await stream(scope, never, send)
        await _slot_back(model)
        return model
    model = asyncio.run(run())
    reader.join(10)
    server.close()
    client.close()
    expected = "[open]" + "".join(f"[{t}]" for t in texts) + "[]" + "[end]"
    return _chunked_body(b"".join(received)).decode(), expected, direct_writes, proto.transport.loop_writes, model


def test_a_reading_client_gets_the_chunks_the_worker_wrote():
    got, expected, direct, loop_writes, model = _stream(200, 40, stall=False)
    assert got == expected and model.active == 0
    assert sum(1 for r in direct if r == 0) > 100  # most pieces went straight from the worker


def test_a_slow_client_gets_every_byte_in_order_through_both_threads():
    """The send buffer fills: a write leaves part of its chunk, the loop writes the rest and carries on."""
    got, expected, direct, loop_writes, model = _stream(300, 400, stall=True)
    assert got == expected and model.active == 0
    assert any(r > 0 for r in direct)  # a chunk the socket took only part of (then the loop's)
    assert loop_writes > 10


def test_no_direct_writes_over_tls_without_chunks_or_descriptors():
    a, b = socket.socketpair()
    try:
        proto = _protocol(a)
        a.setblocking(False)
        proto.cycle.chunked_encoding = False
        assert DirectChunks.of(proto) is None
        proto.cycle.chunked_encoding = True
        proto.transport.get_extra_info = lambda name: object() if name == "sslcontext" else a
        assert DirectChunks.of(proto) is None
        proto = _protocol(a)
        a.setblocking(True)  # a socket that blocks could stall the worker
        assert DirectChunks.of(proto) is None
        a.setblocking(False)
        chunks = DirectChunks.of(proto)
        assert chunks is not None and chunks.idle()
        chunks.close()
        with mock.patch("os.dup", side_effect=OSError(24, "Too many open files")):
            assert DirectChunks.of(proto) is None  # the reply then goes through the event loop
    finally:
        a.close()
        b.close()
