"""A real `python -m engine serve` on a free local port, for the tests that attack it from outside:
its output is kept (to look for leaked keys and tracebacks), its exit status read after a signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(path: Path, seed: int = 0) -> Path:
    """A random-weight llama MoE (tools/make_tiny_gguf.py, 250 KB): fast to load and to run, and its
    byte-level vocabulary makes it emit invalid UTF-8 now and then."""
    import make_tiny_gguf

    return make_tiny_gguf.write_llama_moe(path, seed=seed)


class LiveServer:
    def __init__(self, *args: str, key: str | None = None, wait: float = 180):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(self.port), "-t", "1", *args],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120):
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {}),
             **(headers or {})}
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)[:2]

    def post(self, path, obj=None, **kw):
        return self.request("POST", path, json.dumps(obj).encode(), **kw)

    def metric(self, name: str) -> float:
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(f"ggufpy:{name} "):
                return float(line.split()[1])
        raise KeyError(name)

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def raw_exchange(port: int, data: bytes, *, timeout: float = 30, shutdown_write: bool = False) -> bytes:
    """Send raw bytes over a plain socket, return what comes back until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return out


def status_of(reply: bytes) -> int | None:
    """The status code of a raw HTTP reply, None for a connection closed without one."""
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])
