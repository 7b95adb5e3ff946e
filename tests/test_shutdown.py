"""SIGTERM: the server stops accepting, lets in-flight requests finish (or cancels them past
--timeout-graceful-shutdown), and exits 0, as systemd and Kubernetes expect."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest

from live_server import LiveServer, tiny_model

LONG = {"prompt": "a", "temperature": 0}  # the tiny model's greedy reply to "a" runs to max_tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_model(tmp_path_factory.mktemp("shutdown") / "tiny.gguf"))


def test_sigterm_on_an_idle_server_exits_0_at_once(model):
    srv = LiveServer("-m", model)
    try:
        assert srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
        start = time.monotonic()
        assert srv.terminate(timeout=30) == 0, srv.output()
        assert time.monotonic() - start < 5
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()


def test_sigterm_lets_an_in_flight_request_finish_and_refuses_new_ones(model):
    srv = LiveServer("-m", model, "--timeout-graceful-shutdown", "20")
    try:
        result = {}
        t = threading.Thread(target=lambda: result.update(r=srv.post("/v1/completions", {**LONG, "max_tokens": 600},
                                                                     timeout=60)))
        t.start()
        time.sleep(0.5)  # running (600 tokens: ~1.5 s)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        t.join(60)
        status, body, _ = result["r"]
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 600  # finished whole
        assert srv.proc.wait(30) == 0, srv.output()
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()


def test_sigterm_cancels_what_outlasts_the_grace_period_and_still_exits_0(model):
    srv = LiveServer("-m", model, "--timeout-graceful-shutdown", "1", "-c", "4096")
    try:
        got = {}

        def stream():
            try:
                got["r"] = srv.request("POST", "/v1/completions", json.dumps(
                    {**LONG, "max_tokens": 4000, "stream": True}).encode(), timeout=60)
            except Exception as e:  # noqa: BLE001 -- the connection is cut: that is the expected end
                got["e"] = e

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(0.8)
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(30) == 0, srv.output()
        assert time.monotonic() - start < 8  # the grace period (1 s) and the workers' stop, not the 10 s generation
        t.join(30)
        assert not t.is_alive()
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()
