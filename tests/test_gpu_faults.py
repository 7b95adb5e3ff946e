"""GPU faults are reported, never fatal: each path proven with the fault-injection switch.

GGUFPY_FAIL_KERNEL makes a kernel fail to build (`build:FAMILY`) or to launch (`NAME`, or `NAME:N`
for its N-th launch only) with a `KernelError` raised where a driver's would be. The checks:
`auto` falls back to the CPU with one warning (at load, and mid-generation without losing the
answer); an explicit GPU backend gives the CLI a one-line error and exit code 1, no traceback; a
server whose request hits a failing kernel answers a JSON error and serves the next request.
GGUFPY_AUTO_BACKENDS=opencl,cpu lets `auto` take PoCL, since CI has no GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from engine.engine import Engine
from gpu_devices import device_backend
from kernels import KernelError
from kernels.gpu import build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def on_pocl(monkeypatch):
    device_backend("opencl")  # skip (fail in CI) without an OpenCL device
    monkeypatch.setenv("GGUFPY_AUTO_BACKENDS", "opencl,cpu")
    build._launches.clear()
    return monkeypatch


def test_a_failing_build_is_a_kernel_error_naming_kernel_device_and_cause(on_pocl, smollm2_path):
    on_pocl.setenv(build.FAIL_ENV, "build:norm_rope")
    with pytest.raises(KernelError) as e:
        Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="opencl")
    msg = str(e.value)
    assert "norm_rope" in msg and "Portable Computing Language" in msg and build.FAIL_ENV in msg


def test_auto_falls_back_to_the_cpu_with_one_warning(on_pocl, smollm2_path):
    on_pocl.setenv(build.FAIL_ENV, "rms_norm")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng = Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="auto")
    assert eng.backend.name == "cpu"
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "rms_norm" in msgs[0] and "CPU" in msgs[0], msgs
    assert eng.generate("The sky is", max_tokens=4, temperature=0).tokens


def test_auto_falls_back_mid_generation_and_finishes_the_answer(on_pocl, smollm2_path):
    """A kernel that fails after the model is running (its 200th launch: mid-answer) moves the engine
    to the CPU once; the answer is completed there and is the one the CPU gives."""
    cpu = Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="cpu")
    want = cpu.generate("The capital of France is", max_tokens=12, temperature=0).tokens
    eng = Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="auto")
    assert eng.backend.name == "opencl"
    on_pocl.setenv(build.FAIL_ENV, f"rms_norm:{build._launches.get('rms_norm', 0) + 200}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = eng.generate("The capital of France is", max_tokens=12, temperature=0).tokens
    assert eng.backend.name == "cpu"
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert got == want


def test_an_explicit_gpu_backend_fails_the_cli_in_one_line(on_pocl, smollm2_path):
    env = {**os.environ, build.FAIL_ENV: "rms_norm"}
    p = subprocess.run([sys.executable, "-m", "engine", "generate", "-m", str(smollm2_path), "--backend", "opencl",
                        "-p", "Hi", "-n", "4", "-t", "2"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 1
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rms_norm" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_a_server_answers_a_failing_request_with_json_and_serves_the_next(on_pocl, smollm2_path):
    from test_server import Server

    # the server's own load runs one forward pass (61 rms_norm launches): the 100th launch is in the
    # first request, the second request runs clean
    os.environ[build.FAIL_ENV] = "rms_norm:100"
    try:
        srv = Server("-m", str(smollm2_path), "--backend", "opencl", "-c", "256")
    finally:
        del os.environ[build.FAIL_ENV]
    try:
        body = {"model": smollm2_path.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        status, text = srv.post("/v1/chat/completions", body)
        assert status >= 500
        err = json.loads(text)["error"]
        assert "rms_norm" in err["message"] and err["type"]
        status, text = srv.post("/v1/chat/completions", body)
        assert status == 200, text
        assert json.loads(text)["choices"][0]["message"]["content"]
        status, text = srv.get("/props")
        props = json.loads(text)
        assert props["backend"] == "opencl" and "Portable Computing Language" in props["device"]
    finally:
        srv.stop()
