"""Model files that go bad while served, and models that fail to load: errors to the requests that
need them, never a crash, and the other models keep serving (engine/server/file_guard.py).

Deleting a served file is harmless (the memory map keeps it); truncating it in place would make the
next read of a page past the new end a SIGBUS that kills the process. The server holds a read lease
on each served file, so the truncating writer waits until the model is out of service."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from live_server import LiveServer, tiny_model

LONG = {"prompt": "a", "temperature": 0}  # the tiny model's greedy reply to "a" runs to max_tokens


def two_model_server(tmp_path, first: str, second: str, *args: str) -> LiveServer:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"models": [{"model": first, "model_alias": "one"},
                                          {"model": second, "model_alias": "two"}]}))
    return LiveServer("--config", str(cfg), *args)


def completion(srv, model: str, **kw):
    status, body, _ = srv.post("/v1/completions", {"model": model, "prompt": "hello", "max_tokens": 3, **kw})
    return status, json.loads(body)


def alive_and_clean(srv):
    assert srv.proc.poll() is None, srv.output()
    assert srv.get("/v1/models")[0] == 200
    out = srv.output()
    assert "Traceback" not in out and "Fatal Python error" not in out, out[-3000:]


@pytest.fixture()
def models(tmp_path):
    a = tiny_model(tmp_path / "one.gguf", seed=1)
    b = tiny_model(tmp_path / "two.gguf", seed=2)
    return a, b


def test_a_corrupt_model_fails_its_requests_and_the_other_serves(tmp_path, models):
    a, _ = models
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(200))
    srv = two_model_server(tmp_path, str(a), str(bad))
    try:
        for _ in range(2):  # and again: a failed load is not cached as a half-loaded model
            status, body = completion(srv, "two")
            assert status == 500 and "bad.gguf" in body["error"]["message"], body
            assert completion(srv, "one")[0] == 200
        alive_and_clean(srv)
    finally:
        srv.stop()


def test_a_missing_model_file_fails_its_requests_and_the_other_serves(tmp_path, models):
    a, _ = models
    srv = two_model_server(tmp_path, str(a), str(tmp_path / "missing.gguf"))
    try:
        status, body = completion(srv, "two")
        assert 400 <= status < 600 and status != 200 and "missing.gguf" in body["error"]["message"], body
        assert completion(srv, "one")[0] == 200
        alive_and_clean(srv)
    finally:
        srv.stop()


def test_a_served_file_deleted_keeps_serving_from_the_map(tmp_path, models):
    a, b = models
    srv = two_model_server(tmp_path, str(a), str(b))
    try:
        before = completion(srv, "two", temperature=0)
        assert before[0] == 200
        b.unlink()
        after = completion(srv, "two", temperature=0)
        assert after[0] == 200 and after[1]["choices"][0]["text"] == before[1]["choices"][0]["text"]
        assert completion(srv, "one")[0] == 200
        alive_and_clean(srv)
    finally:
        srv.stop()


@pytest.mark.parametrize("during_generation", [False, True])
def test_a_served_file_truncated_gives_errors_not_a_crash(tmp_path, models, during_generation):
    a, b = models
    srv = two_model_server(tmp_path, str(a), str(b), "-c", "4096")
    try:
        assert completion(srv, "two")[0] == 200  # loaded, its file held
        result = {}
        if during_generation:
            t = threading.Thread(target=lambda: result.update(r=srv.post(
                "/v1/completions", {"model": "two", **LONG, "max_tokens": 3000}, timeout=120)))
            t.start()
            time.sleep(0.7)
        start = time.monotonic()
        with open(b, "r+b") as f:  # opening for writing breaks the server's lease: it lets go first
            f.truncate(4096)
        waited = time.monotonic() - start
        assert waited < 40  # well under the kernel's lease-break-time (45 s)
        if during_generation:
            t.join(60)
            status, body, _ = result["r"]
            # cut short: an error (503 before any token left, or the stream's error), never a dead server
            assert status in (200, 503), body
        status, body = completion(srv, "two")
        assert status in (500, 503), body  # reloading a truncated file: the reader's clear error
        assert "two.gguf" in body["error"]["message"] or "model 'two'" in body["error"]["message"], body
        assert completion(srv, "one")[0] == 200
        alive_and_clean(srv)
        # put a good file back: the model serves again
        tiny_model(tmp_path / "fresh.gguf", seed=2)
        shutil.copyfile(tmp_path / "fresh.gguf", b)
        deadline = time.monotonic() + 30
        while completion(srv, "two")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert completion(srv, "two")[0] == 200
    finally:
        srv.stop()
