"""Chat templates rendered in a separate, bounded process: time, memory and output size.

A chat template is code that comes with a model file from anyone. Jinja's sandbox (engine/chat_template.py)
stops it from reaching Python's internals (llama-cpp-python rendered templates unsandboxed:
CVE-2024-34359), but not from looping for ever (`{% for a in range(99999) %}{% for b in range(99999) %}`)
or building gigabytes (`{% set ns.s = ns.s ~ ns.s %}` in a loop): Python cannot interrupt a thread, nor
bound what it allocates. So renders run in worker processes (`python -m engine.template_guard`) that:

* are killed when a render takes longer than `ChatTemplate.render_timeout` seconds (default 1), and
  restarted on the next render;
* live under an address-space limit (RLIMIT_AS: what the interpreter holds after start-up, plus
  1 GiB), so an allocation bomb is a MemoryError in the worker, not the host's OOM killer;
* stop a render whose output passes `ChatTemplate.max_render_chars` (default 8 Mi characters; a
  prompt that large fills any context many times over).

Each failure is a `ChatTemplateError` naming the bound. The worker compiles each template once (by its
text), renders with the same sandboxed environment as the parent, and answers with JSON only: a worker
subverted by a template could not make the parent execute anything (no pickle in that direction).
Workers are pooled (up to 4 at once), so concurrent requests render in parallel; one render costs a
pipe round trip (~0.1 ms) over an in-process one.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path

MEMORY_LIMIT = 1 << 30
MAX_WORKERS = 4
_START_TIMEOUT = 120.0  # a cold interpreter on a loaded machine; not part of any render's time


class RenderFailed(Exception):
    """What went wrong in a render, as the message ChatTemplateError carries."""


# --- framing: 4-byte big-endian length, then the payload


def _send(f, payload: bytes):
    data = memoryview(struct.pack(">I", len(payload)) + payload)
    while data:
        n = f.write(data)
        data = data[n if n is not None else len(data):]
    f.flush()


def _recv_exact(f, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _recv(f) -> bytes:
    (n,) = struct.unpack(">I", _recv_exact(f, 4))
    return _recv_exact(f, n)


# --- the parent's side


class _Worker:
    def __init__(self):
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.template_guard"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(root),
                                     bufsize=0)
        self.out = self.proc.stdout
        self._wait_readable(_START_TIMEOUT, "start")
        if _recv_exact(self.out, 1) != b"R":
            raise RenderFailed("the template renderer did not start")

    def _wait_readable(self, timeout: float, what: str):
        ready, _, _ = select.select([self.out], [], [], timeout)
        if not ready:
            self.kill()
            raise TimeoutError(what)

    def render(self, request: bytes, timeout: float) -> str:
        _send(self.proc.stdin, request)
        self._wait_readable(timeout, "render")
        reply = json.loads(_recv(self.out))
        if "error" in reply:
            if reply.get("fatal"):
                self.kill()  # out of memory: a fresh worker for the next render
            raise RenderFailed(reply["error"])
        return reply["text"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    def __init__(self, size: int):
        self.size = size
        self.idle: list[_Worker] = []
        self.count = 0
        self.cond = threading.Condition()
        self.pid = os.getpid()

    def _take(self) -> _Worker | None:
        with self.cond:
            if self.pid != os.getpid():  # forked: the workers belong to the parent
                self.idle, self.count, self.pid = [], 0, os.getpid()
            while not self.idle and self.count >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.count += 1
            return None  # the caller starts one

    def _give(self, w: _Worker | None):
        with self.cond:
            if w is not None and w.alive():
                self.idle.append(w)
            else:
                self.count -= 1
            self.cond.notify()

    def render(self, source: str, context: dict, timeout: float, max_chars: int) -> str:
        try:
            request = pickle.dumps((source, context, max_chars), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise RenderFailed(f"chat template variables cannot be sent to the renderer: {e}") from None
        w = self._take()
        try:
            if w is None:
                try:
                    w = _Worker()
                except (OSError, TimeoutError, EOFError) as e:
                    raise RenderFailed(f"cannot start the template renderer: {e}") from None
            try:
                return w.render(request, timeout)
            except TimeoutError:
                raise RenderFailed(f"chat template did not finish within {timeout:g} s "
                                   "(a loop that never ends?); stopped") from None
            except (EOFError, OSError, ValueError):
                w.kill()
                raise RenderFailed("chat template renderer died while rendering "
                                   "(the template used too much memory?)") from None
        finally:
            self._give(w)

    def close(self):
        with self.cond:
            for w in self.idle:
                w.kill()
            self.count -= len(self.idle)
            self.idle = []


_POOL = _Pool(MAX_WORKERS)


def render(source: str, context: dict, *, timeout: float, max_chars: int) -> str:
    """`source` rendered with `context` in a worker; RenderFailed with the reason otherwise."""
    return _POOL.render(source, context, timeout, max_chars)


import atexit  # noqa: E402

atexit.register(_POOL.close)


# --- the worker's side


def _limit_memory():
    """RLIMIT_AS = the address space the interpreter holds now (after its imports) + MEMORY_LIMIT."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            held = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = held + MEMORY_LIMIT
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass  # no RLIMIT_AS or /proc here (macOS, Windows): the time and size bounds still hold


def _serve(inp, out):
    from engine.chat_template import render_guarded

    _limit_memory()
    compiled: dict[str, object] = {}
    _send_byte = out.write
    _send_byte(b"R")
    out.flush()
    while True:
        try:
            source, context, max_chars = pickle.loads(_recv(inp))
        except EOFError:
            return
        try:
            text = render_guarded(compiled, source, context, max_chars)
            reply = {"text": text}
        except MemoryError:
            compiled.clear()
            reply = {"error": f"chat template used more than {MEMORY_LIMIT >> 20} MiB of memory; stopped",
                     "fatal": True}
        except RenderFailed as e:
            reply = {"error": str(e)}
        try:
            payload = json.dumps(reply, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
        except MemoryError:
            payload = json.dumps({"error": "chat template output too large to return", "fatal": True}).encode()
        _send(out, payload)
        if reply.get("fatal"):
            return


def main():
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    _serve(inp, out)


if __name__ == "__main__":
    from engine.template_guard import main as _main  # the module under its own name: one RenderFailed class

    _main()
