"""The limits a server owner sets (llama-server's names where it has them) each answer with their
documented status: --max-body-size 413, --max-concurrent-requests/--max-queue 503 with Retry-After,
--request-timeout 504, -n/--n-predict caps max_tokens (finish_reason "length"). A real `serve`
process on the tiny random-weight model (tests/live_server.py)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from live_server import LiveServer, tiny_model

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("limits") / "tiny.gguf"))


def error_of(body: str) -> dict:
    err = json.loads(body)["error"]
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_body_over_max_body_size_is_413(model):
    srv = LiveServer("-m", model, "--max-body-size", "4K")
    try:
        status, body, _ = srv.post("/v1/chat/completions", {**CHAT, "max_tokens": 2, "pad": "x" * 5000})
        assert status == 413
        err = error_of(body)
        assert "4096 bytes" in err["message"] and "--max-body-size" in err["message"]
        assert err["code"] == "request_too_large"
        status, _, _ = srv.post("/v1/chat/completions", {**CHAT, "max_tokens": 2, "pad": "x" * 3000})
        assert status == 200  # under the limit: served
    finally:
        srv.stop()


def test_n_predict_caps_max_tokens_and_is_the_default(model):
    srv = LiveServer("-m", model, "-n", "5")
    try:
        for body in ({**CHAT, "max_tokens": 200}, CHAT):
            status, text, _ = srv.post("/v1/chat/completions", {**body, "temperature": 1.5, "seed": 1})
            assert status == 200, text
            r = json.loads(text)
            assert r["usage"]["completion_tokens"] <= 5
        status, text, _ = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 100, "temperature": 1.5, "seed": 2})
        r = json.loads(text)
        assert r["usage"]["completion_tokens"] <= 5
        if r["usage"]["completion_tokens"] == 5:
            assert r["choices"][0]["finish_reason"] == "length"
        status, text, _ = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 3, "temperature": 1.5})
        assert json.loads(text)["usage"]["completion_tokens"] <= 3  # below the cap: the request's own
    finally:
        srv.stop()


LONG = {"prompt": "a", "temperature": 0}  # the tiny model's greedy reply to "a" never ends: 3000 tokens ~ 7 s


def _long(srv, results, key, max_tokens=3000):
    """A generation that takes seconds on the tiny model."""
    results[key] = srv.post("/v1/completions", {**LONG, "max_tokens": max_tokens}, timeout=120)


def test_over_the_queue_is_503_with_retry_after_and_the_queue_drains(model):
    srv = LiveServer("-m", model, "--max-concurrent-requests", "1", "--max-queue", "1", "-c", "4096")
    try:
        results = {}
        first = threading.Thread(target=_long, args=(srv, results, "running"))
        first.start()
        time.sleep(1.0)  # running
        second = threading.Thread(target=_long, args=(srv, results, "queued", 4))
        second.start()
        time.sleep(0.5)  # waiting for the first
        start = time.monotonic()
        status, body, headers = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert status == 503, body
        assert time.monotonic() - start < 2  # refused at once, not after waiting
        assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
        err = error_of(body)
        assert err["code"] == "server_busy" and "--max-queue 1" in err["message"]
        assert srv.get("/health")[0] == 200  # health is not queued
        first.join(120)
        second.join(120)
        assert results["running"][0] == 200 and results["queued"][0] == 200  # the admitted ones were served
        assert json.loads(results["running"][1])["usage"]["completion_tokens"] == 3000  # it was long indeed
        assert srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200  # and places came back
    finally:
        srv.stop()


def test_request_timeout_is_504_and_frees_the_slot(model):
    srv = LiveServer("-m", model, "--request-timeout", "1", "-c", "4096")
    try:
        start = time.monotonic()
        status, body, _ = srv.post("/v1/completions", {**LONG, "max_tokens": 4000})
        took = time.monotonic() - start
        assert status == 504, body
        assert took < 5, took
        err = error_of(body)
        assert err["code"] == "request_timeout" and "--request-timeout" in err["message"]
        # streamed: the headers are out, the stream ends with the error as its last event
        status, raw, _ = srv.request("POST", "/v1/completions", json.dumps({**LONG, "max_tokens": 4000,
                                                                            "stream": True}).encode())
        assert status == 200
        events = [e for e in raw.split("\n") if e.startswith("data: ")]
        assert "--request-timeout" in events[-2] and events[-1] == "data: [DONE]", events[-2:]
        status, body, _ = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2})
        assert status == 200, body  # the slot was given back
    finally:
        srv.stop()


async def _stalled_stream(app, registry, body: bytes, stall: float) -> tuple[int, int]:
    """POST `body` to the ASGI app, take the response head and first piece, then stop reading for
    `stall` seconds; the model's busy slots then, and after reading the rest."""
    import asyncio

    sent, resume = [], asyncio.Event()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client neither sends more nor leaves

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) >= 2:
            await resume.wait()  # a client that stopped reading: the transport is paused

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(stall)
    busy = sum(m.active for m in registry.loaded.values())
    resume.set()
    await asyncio.wait_for(task, 120)
    assert b"data: [DONE]" in b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    for _ in range(100):  # the worker thread hands its slot back just after the last piece
        if not any(m.active for m in registry.loaded.values()):
            break
        await asyncio.sleep(0.02)
    return busy, sum(m.active for m in registry.loaded.values())


def test_a_client_that_stops_reading_a_stream_pauses_its_generation(model):
    """A reader that stalls does not make the server buffer the whole answer: once the stream's buffer
    (--stream-buffer pieces, 64) is full the generation waits, holding its slot, and goes on when the
    client reads. (Over a real socket the kernel's send buffer, up to tcp_wmem's 4 MB, comes first.)
    The control: with a buffer larger than the answer, the same stall finds the generation done."""
    import asyncio

    from engine.server.app import create_app
    from engine.server.limits import ServerLimits
    from engine.server.registry import ModelRegistry, ModelSpec

    body = json.dumps({**LONG, "max_tokens": 1000, "stream": True}).encode()
    for buffer, paused in ((64, True), (10**6, False)):
        registry = ModelRegistry([ModelSpec(path=model, alias="tiny", n_ctx=2048, n_threads=1)])
        app = create_app(registry, limits=ServerLimits(stream_buffer=buffer))

        async def run():
            start = time.monotonic()
            await _stalled_stream(app, registry, body, 0.0)  # loads the model, warms up; how long it takes
            whole = time.monotonic() - start
            return await _stalled_stream(app, registry, body, whole + 1.0)

        busy, after = asyncio.run(run())
        assert busy == (1 if paused else 0), (buffer, busy)
        assert after == 0
