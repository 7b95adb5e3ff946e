"""The Numba backend's parallel kernels all start from one thread (kernels/numba_cpu/compute_thread.py):
GNU OpenMP keeps a worker pool per calling thread, and a second pool halves every parallel kernel's
speed. Forward passes called from any thread, and the backend's parallel ops called directly, run on
"numba-compute"; results and exceptions come back to the caller."""

import threading

import numpy as np
import pytest

from kernels.numba_cpu import NumbaBackend, compute_thread, products


@pytest.fixture
def seen(monkeypatch):
    """The names of the threads the product driver is called from."""
    names = []
    inner = products.matmul

    def spy(*args, **kwargs):
        names.append(threading.current_thread().name)
        return inner(*args, **kwargs)

    monkeypatch.setattr(products, "matmul", spy)
    return names


def test_ops_run_on_the_compute_thread_from_any_thread(seen):
    from qdata import random_qtensor
    from quant import GGMLType

    be = NumbaBackend(n_threads=2)
    w = random_qtensor(GGMLType.Q4_0, (64, 256), np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    here = be.matmul(x, w)
    there = []
    t = threading.Thread(target=lambda: there.append(be.matmul(x, w)))
    t.start()
    t.join()
    assert np.array_equal(here, there[0])
    assert seen == ["numba-compute", "numba-compute"]


def test_forward_passes_from_two_threads_share_the_compute_thread(seen, smollm2_path):
    from engine.engine import Engine

    eng = Engine.load(str(smollm2_path), n_ctx=64, n_threads=2)
    m = eng.model
    out = {}

    def step(name):
        c = m.new_cache(64)
        out[name] = m.forward([1, 2, 3], c)

    step("main")
    t = threading.Thread(target=step, args=("other",))
    t.start()
    t.join()
    assert np.array_equal(out["main"], out["other"])
    assert seen and set(seen) == {"numba-compute"}


def test_exceptions_come_back_to_the_caller():
    def boom():
        raise KeyError("from the compute thread")

    with pytest.raises(KeyError, match="from the compute thread"):
        compute_thread.run(boom)
    assert compute_thread.run(lambda a, b=0: a + b, 2, b=3) == 5  # and it still serves
    assert compute_thread.run(compute_thread.current) is True
    assert not compute_thread.current()
