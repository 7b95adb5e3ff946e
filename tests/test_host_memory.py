"""The CPU backend's weights in 2 MB pages (kernels/numba_cpu/host_memory.py) and the choice between
that copy and the file's memory map (engine.backends.cpu_weights, --mmap/--no-mmap, use_mmap)."""

import argparse

import numpy as np
import pytest

from engine import backends
from engine.commands.common import add_mmap_args
from engine.engine import Engine
from engine.server.registry import ModelSpec
from kernels.numba_cpu import NumbaBackend
from kernels.numba_cpu.host_memory import ALIGN, PAGE, HugePageArena


def test_arena_copies_are_equal_read_only_aligned_and_packed():
    arena = HugePageArena(chunk=4 * PAGE)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (7, 100), dtype=np.uint8)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    ca, cb = arena.copy(a), arena.copy(b)
    assert np.array_equal(ca, a) and np.array_equal(cb, b) and ca.dtype == a.dtype and cb.shape == b.shape
    assert not ca.flags.writeable and not cb.flags.writeable
    assert ca.ctypes.data % PAGE == 0  # a fresh reservation starts on a 2 MB boundary
    assert cb.ctypes.data == ca.ctypes.data + -(-a.nbytes // ALIGN) * ALIGN  # packed behind the first
    assert not np.shares_memory(ca, a) and arena.bytes == a.nbytes + b.nbytes


def test_arena_takes_an_array_bigger_than_its_chunk_and_a_strided_one():
    arena = HugePageArena(chunk=PAGE)
    big = np.arange(PAGE // 4 + 1000, dtype=np.float32)  # more than a chunk
    strided = np.arange(40, dtype=np.int64).reshape(8, 5)[:, ::2]
    cbig, cs = arena.copy(big), arena.copy(strided)
    assert np.array_equal(cbig, big) and np.array_equal(cs, strided) and cs.flags.c_contiguous
    assert cbig.ctypes.data % PAGE == 0


def test_cpu_weights_follows_mmap_and_otherwise_the_memory_and_the_kernel(monkeypatch, smollm2_path):
    from engine.gguf_file import GGUF

    g = GGUF.open(smollm2_path)
    assert backends.cpu_weights(g, True) == "mapped" and backends.cpu_weights(g, False) == "memory"
    monkeypatch.setattr(backends, "hugepages_available", lambda: True)
    monkeypatch.setattr("engine.gguf_file._available_memory", lambda: 2 * g.nbytes)
    assert backends.cpu_weights(g) == "memory"
    monkeypatch.setattr("engine.gguf_file._available_memory", lambda: 2 * g.nbytes - 1)  # more than half
    assert backends.cpu_weights(g) == "mapped"
    monkeypatch.setattr("engine.gguf_file._available_memory", lambda: 1 << 50)
    monkeypatch.setattr(backends, "hugepages_available", lambda: False)  # THP "never", macOS, ...
    assert backends.cpu_weights(g) == "mapped"


def test_weights_in_memory_give_the_same_logits_and_copy_only_what_products_read(smollm2_path):
    mapped = Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="cpu", mmap=True)
    inmem = Engine.load(smollm2_path, n_ctx=64, n_threads=2, backend="cpu", mmap=False)
    assert mapped.backend.weights == "mapped" and inmem.backend.weights == "memory"
    ids = mapped.tokenize("The capital of France is")
    assert np.array_equal(mapped.logits(ids), inmem.logits(ids))  # the same bytes: bit for bit
    copied = inmem.backend._arena.bytes
    # the stacked Q/K/V and gate/up are copied, not also their parts; SmolLM2's output is its token
    # embedding (tied), read by a product, so it is in too
    assert 0.9 * inmem.gguf.nbytes < copied <= inmem.gguf.nbytes
    from kernels.numba_cpu import products

    w = inmem.model.output
    data = products._prepared(w, 2)[1]
    assert not np.shares_memory(data, inmem.gguf.parts[0].buffer)  # not the file's map
    assert data.ctypes.data % ALIGN == 0


def test_a_weight_looked_up_before_its_first_product_is_copied_at_that_product(smollm2_path):
    from engine.gguf_file import GGUF
    from kernels.numba_cpu import products

    be = NumbaBackend(n_threads=1, weights="memory")
    w = be.upload(GGUF.open(smollm2_path).tensor("token_embd.weight"))
    rows = be.get_rows(w, np.array([5, 7]))
    looked_up = products._prepared(w, 2)[1]
    assert looked_up.flags.writeable is False and be._arena.bytes == 0  # a lookup copies nothing
    x = np.ones((1, w.shape[1]), np.float32)
    y = be.matmul(x, w)
    assert be._arena.bytes == w.data.nbytes and not np.shares_memory(products._prepared(w, 2)[1], looked_up)
    assert np.array_equal(be.get_rows(w, np.array([5, 7])), rows)
    assert np.array_equal(y, NumbaBackend(n_threads=1).matmul(x, w))


def test_bad_weights_option_and_config_values_are_refused():
    with pytest.raises(ValueError, match="weights must be one of mapped, memory"):
        NumbaBackend(weights="hugepages")
    with pytest.raises(ValueError, match="use_mmap must be true or false"):
        ModelSpec.from_config({"model": "m.gguf", "use_mmap": "no"}, {})
    assert ModelSpec.from_config({"model": "m.gguf", "use_mmap": False}, {}).mmap is False
    assert ModelSpec.from_config({"model": "m.gguf"}, {"mmap": True}).mmap is True
    assert ModelSpec.from_config({"model": "m.gguf"}, {}).mmap is None


def test_mmap_flags():
    p = argparse.ArgumentParser()
    add_mmap_args(p)
    assert p.parse_args([]).mmap is None
    assert p.parse_args(["--mmap"]).mmap is True and p.parse_args(["--no-mmap"]).mmap is False
    with pytest.raises(SystemExit):
        p.parse_args(["--mmap", "--no-mmap"])


def test_llama_compat_use_mmap(smollm2_path):
    from engine.llama_compat import Llama

    assert Llama(str(smollm2_path), n_ctx=64, use_mmap=False, verbose=False)._engine.backend.weights == "memory"
    assert Llama(str(smollm2_path), n_ctx=64, use_mmap=True, verbose=False)._engine.backend.weights == "mapped"
