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
