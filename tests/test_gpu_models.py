"""Whole models on the device backends (PoCL in CI, CUDA where a GPU is) against llama.cpp, and the
machinery around them: replayed decode steps, prefill against decode, partial offload, device memory.

The conformance checks are test_conformance.py's own (identical bars): a GPU engine must agree with
llama.cpp exactly as well as the CPU engine does. PoCL runs the same kernel sources the GPUs compile,
so these prove the kernels on every commit; a GPU machine runs them again through CuPy
(benchmarks/gpu_check.sh, GGUFPY_TEST_BACKENDS=cuda).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.engine import Engine
from engine.generate import decode, prefill
from gpu_devices import backend_names, device_backend
from llama_ref import cosine, margins
from test_conformance import PROMPTS, check_free_running, check_logits, check_teacher_forced, model_files  # noqa: F401

BACKENDS = backend_names()
DEVICE_MODELS = ["smollm2", "smollm2-Q5_K_M", "gemma3", "tiny-moe", "tiny-gpt-oss"]

_engines: dict = {}


def device_engine(path, backend: str, **kw) -> Engine:
    key = (str(path), backend, tuple(sorted(kw.items())))
    if key not in _engines:
        _engines.clear()  # one model at a time keeps memory flat
        device_backend(backend)  # skips (or fails in CI) when the device is missing
        _engines[key] = Engine.load(path, n_ctx=512, n_threads=2, backend=backend, **kw)
    return _engines[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", DEVICE_MODELS)
def test_model_matches_llama_cpp_on_device(model_files, name, backend):
    """Logits, teacher-forced greedy and free-running greedy against llama.cpp, on the device."""
    path = model_files(name)
    eng = device_engine(path, backend)
    assert eng.backend.name == backend and eng.model.place.n_gpu_layers == eng.model.p.n_layer + 1
    check_logits(eng, path, eng.tokenize(PROMPTS[0]))
    check_teacher_forced(eng, path, PROMPTS[1])
    check_free_running(eng, path, PROMPTS[3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "tiny-gpt-oss"])
def test_prefill_equals_decode_steps_on_device(model_files, name, backend):
    """N prompt tokens in one pass (tiled products, tiled attention) against N decode steps (matrix-vector
    products, split-KV attention, replayed from the recorded step): the same logits up to 8-bit
    rounding noise, the same top-1 wherever the choice is firm."""
    eng = device_engine(model_files(name), backend)
    ids = eng.tokenize(PROMPTS[2])[:24]
    model = eng.model
    batch = model.place.output.to_numpy(prefill(model, model.new_cache(64), ids, last_only=False))
    cache = model.new_cache(64)
    steps = np.concatenate([decode(model, cache, t) for t in ids])
    assert getattr(cache, "step_graph", None) is not None, "decode steps were not replayed"
    cos = cosine(batch, steps)
    assert np.median(cos) >= 0.999 and cos.min() >= 0.98, np.round(cos, 4).tolist()
    firm = margins(batch) >= 0.5
    assert np.array_equal(batch.argmax(-1)[firm], steps.argmax(-1)[firm])


@pytest.mark.parametrize("backend", BACKENDS)
def test_replayed_step_is_the_plain_step(model_files, backend):
    """A replayed decode step (one graph launch / the recorded launches with new inputs) computes exactly
    what a plain forward pass computes at the same position: nothing recorded depends on the position."""
    eng = device_engine(model_files("tiny-gpt-oss"), backend)  # sinks, windows, experts routed on the device
    model = eng.model
    ids = eng.tokenize(PROMPTS[0])[:20]
    plain, replayed = model.new_cache(32), model.new_cache(32)
    for i, t in enumerate(ids):
        a = model.place.output.to_numpy(model.forward([t], plain))
        b = decode(model, replayed, t)
        assert np.array_equal(a, b), f"step {i} differs (max {np.abs(a - b).max()})"
        assert plain.n_past == replayed.n_past == i + 1
    assert replayed.step_graph is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_offload_matches_full(model_files, backend, smollm2_path):
    """-ngl N: the last N layers on the device, the rest on the CPU, as llama.cpp assigns them; the
    output layer is on the device only when N > n_layer. The logits agree with the CPU engine's."""
    cpu = Engine.load(smollm2_path, n_ctx=128, n_threads=2, backend="cpu")
    ids = cpu.tokenize(PROMPTS[0])
    ref = cpu.logits(ids)
    n_layer = cpu.model.p.n_layer
    for ngl in (0, 7, n_layer, n_layer + 1):
        eng = Engine.load(smollm2_path, n_ctx=128, n_threads=2, backend=backend, n_gpu_layers=ngl)
        place = eng.model.place
        assert place.n_gpu_layers == ngl
        assert sum(be is eng.backend for be in place.layers) == min(ngl, n_layer)
        assert (place.output is eng.backend) == (ngl > n_layer)
        assert (place.input is eng.backend) == (ngl == n_layer + 1)
        cos = cosine(eng.logits(ids), ref)
        assert cos.min() >= 0.99 and np.median(cos) >= 0.999, (ngl, np.round(cos, 4).tolist())


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_too_big_for_the_device_says_how_much_and_suggests_ngl(smollm2_path, backend, monkeypatch):
    from engine.backends import DeviceMemoryError, plan_offload
    from engine.engine import _kv_bytes_per_layer
    from engine.gguf_file import GGUF

    be = device_backend(backend)
    g = GGUF.open(smollm2_path)
    kv = _kv_bytes_per_layer(g, 4096)
    plan_offload(g, be, 30, None, kv)  # fits as it is
    monkeypatch.setattr(be.rt, "free_memory", lambda: 40 << 20)  # a 40 MiB device
    with pytest.raises(DeviceMemoryError) as e:
        plan_offload(g, be, 30, None, kv)
    msg = str(e.value)
    assert "needs" in msg and "GiB" in msg and "-ngl" in msg and be.device_name in msg
    n = int(msg.split("-ngl ")[1].split()[0])
    assert 0 < n < 30
    plan_offload(g, be, 30, n, kv)  # the suggestion fits
