"""Malformed traffic through a plain socket, below any HTTP client library's politeness: each case
gets a 4xx or a closed connection, never a 5xx or a hang, and the server keeps serving after every
one of them (a real `serve` process on the tiny model, tests/live_server.py)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from live_server import LiveServer, raw_exchange, status_of, tiny_model

CHAT = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'


def post(path: bytes, body: bytes, *, ctype: bytes = b"application/json", length: int | None = None,
         extra: bytes = b"") -> bytes:
    n = len(body) if length is None else length
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(n).encode() + b"\r\n" + extra + b"Connection: close\r\n\r\n" + body)


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


CASES = {
    "truncated_body": (post(b"/v1/chat/completions", CHAT[:20], length=len(CHAT)), True),
    "truncated_head": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le", True),
    "wrong_content_type_form": (post(b"/v1/chat/completions", b"messages=hi&max_tokens=2",
                                     ctype=b"application/x-www-form-urlencoded"), False),
    "wrong_content_type_multipart": (post(b"/v1/completions", b"--b\r\nContent-Disposition: form-data; name=prompt"
                                          b"\r\n\r\nhi\r\n--b--\r\n", ctype=b"multipart/form-data; boundary=b"), False),
    "huge_header": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", False),
    "ten_thousand_headers": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" +
                             b"".join(b"X-H%d: v\r\n" % i for i in range(10000)) + b"\r\n", False),
    "invalid_utf8_body": (post(b"/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'),
                          False),
    "invalid_utf8_path": (b"GET /v1/\xff\xfe/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    "json_nested_10000_arrays": (post(b"/v1/chat/completions", nested(10000)), False),
    "json_nested_10000_objects": (post(b"/v1/completions", b'{"prompt": "x", "a": ' + b'{"a": ' * 10000 + b"1" +
                                       b"}" * 10001), False),
    "json_schema_nested_900": (post(b"/v1/completions", json.dumps(
        {"prompt": "x", "max_tokens": 2, "json_schema": json.loads('{"type": "array", "items": ' * 900 + "{}" + "}" * 900)}
    ).encode()), False),
    "json_not_an_object": (post(b"/v1/completions", b'"just a string"'), False),
    "json_trailing_garbage": (post(b"/v1/completions", b'{"prompt": "x"} trailing'), False),
    "json_nan": (post(b"/v1/completions", b'{"prompt": "x", "temperature": NaN, "max_tokens": 1}'), False),
    "json_huge_number": (post(b"/v1/completions", b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}"), False),
    "bad_content_length": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", False),
    "negative_content_length": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", False),
    "length_and_chunked": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False),
    "bad_chunk_size": (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                       False),
    "not_http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4, False),
    "http2_preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64, False),
    "unknown_method": (b"BREW /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    "absolute_garbage_target": (b"GET http://[::1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
    "null_bytes_in_header": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n", False),
}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(tmp_path_factory, request):
    """The server on each of uvicorn's HTTP/1.1 parsers (--http; httptools is the default)."""
    path = tiny_model(tmp_path_factory.mktemp("raw") / "tiny.gguf")
    # -to: an idle or trickling client is dropped after 3 s
    s = LiveServer("-m", str(path), "--timeout", "3", "--http", request.param)
    yield s
    s.stop()


def still_serving(server):
    assert server.get("/health")[0] == 200
    status, body, _ = server.request("POST", "/v1/chat/completions", CHAT)
    assert status == 200, body


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_request_gets_a_4xx_or_a_closed_connection(server, name):
    data, half_close = CASES[name]
    start = time.monotonic()
    reply = raw_exchange(server.port, data, timeout=20, shutdown_write=half_close)
    assert time.monotonic() - start < 15, "the server held the connection"
    status = status_of(reply)
    assert status is None or 400 <= status < 500, reply[:300]
    head, _, rest = reply.partition(b"\r\n\r\n")
    if status is not None and b"content-type: application/json" in head.lower():
        n = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")))
        assert json.loads(rest[:n])["error"]["message"], rest  # OpenAI's error JSON where there is a body
    still_serving(server)


def test_a_100_mb_body_is_refused_with_413_before_it_is_read(server):
    """Declared up front: the 413 comes back before the client has sent most of the body."""
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (100 << 20))
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(head)
        sent, reply, chunk = 0, b"", b"x" * (1 << 20)
        s.settimeout(0.05)
        while sent < (100 << 20):
            try:
                s.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break
            try:
                reply += s.recv(65536)
                if reply:
                    break
            except socket.timeout:
                pass
        s.settimeout(20)
        try:
            while b"\r\n\r\n" not in reply:
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        except (ConnectionResetError, socket.timeout):
            pass
    assert status_of(reply) == 413, reply[:300]
    assert sent < (100 << 20)
    still_serving(server)


def test_a_100_mb_chunked_body_is_cut_off_with_413(server):
    """No Content-Length: counted as it arrives, refused once past --max-body-size (32 MB)."""
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n" % (1 << 20) + b" " * (1 << 20) + b"\r\n"
    reply = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(head)
        try:
            for _ in range(100):
                s.sendall(piece)
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        except (ConnectionResetError, socket.timeout):
            pass
    assert status_of(reply) == 413, reply[:300]
    still_serving(server)


@pytest.mark.parametrize("what,data", [
    ("silent", b""),
    ("trickled_head", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"),
    ("stalled_body", post(b"/v1/completions", b'{"prompt": ', length=200)),
])
def test_an_idle_or_trickling_client_is_dropped_after_the_timeout(server, what, data):
    """llama-server's -to/--timeout (3 s here): the connection is closed, the server goes on."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        if data:
            s.sendall(data)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    took = time.monotonic() - start
    assert 2.5 < took < 10, took
    still_serving(server)


def test_many_connections_at_once_do_not_take_the_server_down(server):
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        for s in socks[::2]:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a request each
        still_serving(server)
    finally:
        for s in socks:
            s.close()
    still_serving(server)


def test_no_traceback_after_all_of_it(server):
    still_serving(server)
    assert server.proc.poll() is None
    out = server.output()
    assert "Traceback" not in out, out[-3000:]
