"""The batch scheduler as a library (engine/batching.py): slots of one model stepping together."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.batching import BatchCache, BatchScheduler, Work, batched_slots
from engine.engine import Engine
from engine.models.common import ContextFull

PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):",
           "1, 2, 3, 4, 5, 6,", "In 1492, Columbus sailed", "Water boils at a temperature of"]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    return Engine.load(smollm2_path, n_ctx=2048, backend="cpu", n_threads=2)


def run_all(slots, prompts, **kw):
    out, errors = [None] * len(prompts), []

    def run(i):
        try:
            out[i] = slots[i].generate(prompts[i], seed=i, **kw).tokens
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    return out


def test_together_alone_and_unbatched_agree(engine):
    """Sampled continuations of six prompts: the same run alone through the scheduler, run together in
    shared steps, and run by a plain engine (prompts of more than 4 tokens: the plain engine's prompt
    path is then the scheduler's, so the conformance with llama.cpp carries over)."""
    slots = batched_slots(engine, 6)
    kw = dict(max_tokens=20, temperature=0.8, cache_prompt=False)
    alone = [slots[0].generate(p, seed=i, **kw).tokens for i, p in enumerate(PROMPTS)]
    together = run_all(slots, PROMPTS, **kw)
    plain = [engine.generate(p, seed=i, **kw).tokens for i, p in enumerate(PROMPTS)]
    assert together == alone == plain
    st = slots[0].cache.scheduler.stats()
    assert st["max_batch"] >= 3 and st["batch_invariant"]


def test_fast_batching_gives_up_invariance_only(engine):
    """--batching fast: the steps run as one product over all rows (the tiled GEMM past 4 rows), so a
    request's tokens may round differently beside others; alone it is the exact path, and greedy text
    beside others still agrees with it on the top choices (the logits differ by rounding only)."""
    slots = batched_slots(engine, 8, exact=False)
    st = slots[0].cache.scheduler.stats()
    assert not st["batch_invariant"] and st["mode"] == "fast"
    prompts = [f"Count to ten in {w}." for w in ("English", "French", "German", "Spanish", "Italian", "Dutch")]
    kw = dict(max_tokens=6, temperature=0, cache_prompt=False)
    alone = [slots[0].generate(p, **kw).tokens for p in prompts]
    assert alone == [engine.generate(p, **kw).tokens for p in prompts]
    together = run_all(slots, prompts, **kw)
    assert slots[0].cache.scheduler.stats()["max_batch"] >= 5
    agree = sum(a[:3] == t[:3] for a, t in zip(alone, together))
    assert agree >= 5, (alone, together)


def test_each_slot_has_its_share_of_the_context(engine):
    slots = batched_slots(engine, 4)
    assert [s.n_ctx for s in slots] == [512] * 4 and all(s.model is engine.model for s in slots)
    with pytest.raises(ValueError, match="cannot be divided"):
        batched_slots(engine, 4096)


def test_a_sequence_that_overflows_its_slot_fails_alone(engine):
    slots = batched_slots(engine, 16)  # 128 positions each
    long = " ".join(["word"] * 200)
    prompts = [long, "The capital of France is"]
    errors, out = [], [None, None]

    def run(i):
        try:
            out[i] = slots[i].generate(prompts[i], max_tokens=8, temperature=0)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(errors) == 1 and "context" in str(errors[0]) and out[1].tokens


class FakeCache:
    def __init__(self, n_ctx=100):
        self.n_ctx, self.n_past = n_ctx, 0

    def check_room(self, n):
        if self.n_past + n > self.n_ctx:
            raise ContextFull(self.n_past, n, self.n_ctx)


def test_a_step_takes_every_decode_token_then_prompt_chunks_within_the_budget():
    sched = BatchScheduler.__new__(BatchScheduler)
    sched.budget, sched._expected = 300, set()
    decode = [Work(FakeCache(), [1], True, "last") for _ in range(4)]
    prompts = [Work(FakeCache(), [2] * 256, False, "none") for _ in range(3)]
    sched._pending = [prompts[0], decode[0], prompts[1], decode[1], decode[2], prompts[2], decode[3]]
    first = sched._choose()
    assert first == decode + prompts[:1]  # 4 + 256 <= 300; another chunk would pass it
    assert sched._pending == prompts[1:] and sched._expected == {id(w.cache) for w in decode}
    assert sched._choose() == [prompts[1]]
    big = Work(FakeCache(), [3] * 1000, False, "last")  # bigger than the budget: alone, never starved
    sched._pending = [big]
    assert sched._choose() == [big]


def test_batch_cache_hands_each_sequence_its_rows():
    works = [Work(FakeCache(), [1], True, "last"), Work(FakeCache(), [1, 2, 3], False, "none"),
             Work(FakeCache(), [4, 5], False, "all"), Work(FakeCache(), [6, 7, 8], False, "last")]
    bc = BatchCache(works)
    h = np.arange(9, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    rows = bc.logit_rows(h, True)
    assert rows[:, 0].tolist() == [0, 4, 5, 8]
    bc.hand_out(rows)
    assert works[0].result[:, 0].tolist() == [0] and works[1].result is None
    assert works[2].result[:, 0].tolist() == [4, 5] and works[3].result[:, 0].tolist() == [8]


def test_a_failing_pass_fails_its_sequences_and_the_scheduler_goes_on(engine, monkeypatch):
    slots = batched_slots(engine, 2)
    sched = slots[0].cache.scheduler
    real = engine.model.forward
    calls = []

    def flaky(tokens, cache, **kw):
        calls.append(len(tokens))
        if len(calls) == 1:
            raise RuntimeError("injected kernel failure")
        return real(tokens, cache, **kw)
    monkeypatch.setattr(sched.model, "forward", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        slots[0].generate("The capital of France is", max_tokens=4, temperature=0)
    assert slots[1].generate("The capital of France is", max_tokens=4, temperature=0).tokens


@pytest.mark.parametrize("be_name", __import__("gpu_devices").backend_names())
def test_device_backends_run_the_batched_step(tiny_gpt_oss_path, be_name):
    """The same scheduler on a device (PoCL in CI): one pass over decode tokens and a prompt chunk of
    different sequences gives each the logits it gets alone, within the device's rounding (the
    device kernels do not promise batch invariance, and /props says so)."""
    eng = Engine.load(tiny_gpt_oss_path, n_ctx=256, backend=be_name)
    m = eng.model
    a, b, c = m.new_cache(64), m.new_cache(64), m.new_cache(64)
    m.forward([1, 2, 3, 4, 5], a)
    m.forward([6, 7], b)
    works = [Work(a, [9], True, "last"), Work(b, [10], True, "last"), Work(c, [11, 12, 13, 14, 15, 16], False, "last")]
    got = eng.backend.to_numpy(m.forward([9, 10, 11, 12, 13, 14, 15, 16], BatchCache(works)))
    ra, rb, rc = m.new_cache(64), m.new_cache(64), m.new_cache(64)
    m.forward([1, 2, 3, 4, 5], ra)
    m.forward([6, 7], rb)
    want = np.concatenate([eng.backend.to_numpy(m.forward(t, r)) for t, r in
                           (([9], ra), ([10], rb), ([11, 12, 13, 14, 15, 16], rc))])
    assert got.shape == want.shape == (3, m.p.n_vocab)
    assert a.n_past == 6 and b.n_past == 3 and c.n_past == 6
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2 * np.abs(want).max())
    slots = batched_slots(eng, 3)  # and through the scheduler: shared steps, one stream's steps replayed
    assert slots[0].cache.scheduler.batch_invariant is False
    out = run_all(slots, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], max_tokens=6, temperature=0)
    assert all(1 <= len(t) <= 6 for t in out)


@pytest.mark.parametrize("which", ["real", "gpt_oss"])
def test_pooled_cache_step_is_each_sequence_alone(real_model_path, tiny_gpt_oss_path, which):
    """Slots of a KVPool (CPU): one kv_scatter and one attention call a layer over the pool, each token
    limited to its sequence's region by spans, give every sequence bit for bit the logits it gets in a
    cache of its own (Gemma 3's sliding windows and gpt-oss's sinks included; decode tokens and a
    prompt chunk in one step; the regions hold another sequence's stale rows past their ends)."""
    path = real_model_path if which == "real" else tiny_gpt_oss_path
    eng = Engine.load(path, n_ctx=512, backend="cpu", n_threads=2)
    m = eng.model
    a, b, c = m.new_caches(64, 3)
    assert a.pool is b.pool is c.pool and (a.base, b.base, c.base) == (0, 64, 128)
    m.forward(list(range(1, 41)), c)  # stale rows in c's region, then forgotten
    c.truncate(0)
    m.forward([1, 2, 3, 4, 5], a)
    m.forward([6, 7], b)
    works = [Work(a, [9], True, "last"), Work(b, [10], True, "last"), Work(c, [11, 12, 13, 14, 15, 16], False, "all")]
    bc = BatchCache(works)
    assert bc.pool is a.pool
    got = eng.backend.to_numpy(m.forward([9, 10, 11, 12, 13, 14, 15, 16], bc))
    ra, rb, rc = m.new_cache(64), m.new_cache(64), m.new_cache(64)
    assert ra.pool is None
    m.forward([1, 2, 3, 4, 5], ra)
    m.forward([6, 7], rb)
    want = np.concatenate([eng.backend.to_numpy(m.forward(t, r, last_only=last)) for t, r, last in
                           (([9], ra, True), ([10], rb, True), ([11, 12, 13, 14, 15, 16], rc, False))])
    assert got.shape == want.shape == (8, m.p.n_vocab)
    np.testing.assert_array_equal(got, want)
