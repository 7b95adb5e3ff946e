"""Continuous batching through the server (engine/batching.py, engine/server/slots.py): a real server
with 8 slots, driven by the `openai` client from many threads at once."""

from __future__ import annotations

import threading
import time

import pytest

from test_server import Server

openai = pytest.importorskip("openai")

PROMPTS = [f"Write one sentence about {w}." for w in (
    "the sea", "mountains", "a cat", "bread", "winter", "trains", "music", "the moon", "rivers", "coffee",
    "a library", "rain", "bicycles", "gardens", "the desert", "a clock")]


@pytest.fixture(scope="module")
def server(smollm2_path):
    s = Server("-m", str(smollm2_path), "--parallel", "8", "-c", "8192", "-b", "512", "-a", "x")
    yield s
    s.stop()


def stream(server, i: int, max_tokens: int = 16, gaps: list | None = None, stop_after: int | None = None,
           prompt: str | None = None, extra_body: dict | None = None) -> str:
    """Chat i streamed with seed i; the text (and, with `gaps`, the times its chunks arrived)."""
    chunks = server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": prompt or PROMPTS[i]}], max_tokens=max_tokens,
        temperature=0.8, seed=i, stream=True, extra_body=extra_body)
    text = []
    for n, ch in enumerate(chunks):
        if gaps is not None:
            gaps.append(time.monotonic())
        if ch.choices and ch.choices[0].delta.content:
            text.append(ch.choices[0].delta.content)
        if stop_after is not None and n >= stop_after:
            chunks.close()  # the client goes away mid-stream
            break
    return "".join(text)


def concurrently(fns) -> list:
    out = [None] * len(fns)
    errors = []

    def run(k):
        try:
            out[k] = fns[k]()
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return out


def test_props_say_batched_and_invariant(server):
    status, body = server.get("/props")
    props = __import__("json").loads(body)
    assert status == 200 and props["continuous_batching"] and props["batch_invariant"] is True
    assert props["total_slots"] == 8 and props["n_ctx"] == 1024 and props["n_batch"] == 512


def test_sixteen_concurrent_streams_give_what_each_gives_alone(server):
    alone = [stream(server, i) for i in range(16)]
    together = concurrently([lambda i=i: stream(server, i) for i in range(16)])
    assert together == alone
    status, body = server.get("/props")
    assert __import__("json").loads(body)["batching"]["max_batch"] >= 4  # they did share steps


def test_a_cancelled_stream_leaves_the_others_unchanged(server):
    alone = [stream(server, i, max_tokens=16) for i in range(4)]
    out = concurrently([lambda: stream(server, 4, max_tokens=48, stop_after=3)] +
                       [lambda i=i: stream(server, i, max_tokens=16) for i in range(4)])
    assert out[1:] == alone
    assert stream(server, 5) == stream(server, 5)  # and the server goes on


def test_a_long_prompt_does_not_stall_the_streams(server):
    """Four streams decode while a ~850-token prompt arrives: it is taken 256 tokens a step beside
    them, so no stream waits for the whole prompt between two of its tokens."""
    gaps = [[] for _ in range(4)]
    long_prompt = "Summarise this: " + " ".join(f"item {k} is {k * 7 % 13}." for k in range(95))
    result = {}

    def long():
        time.sleep(1.5)  # the streams are decoding by then
        t0 = time.monotonic()
        r = server.client().chat.completions.create(model="x", messages=[{"role": "user", "content": long_prompt}],
                                                    max_tokens=1, temperature=0)
        result.update(t0=t0, t1=time.monotonic(), prompt_ms=r.model_extra["timings"]["prompt_ms"],
                      n=r.usage.prompt_tokens)
    count = "Count from 1 to 100, one number a line."
    # ignore_eos: every stream runs its 200 tokens (one that stopped early would have nothing to show)
    concurrently([lambda k=k: stream(server, k, max_tokens=200, gaps=gaps[k], prompt=count,
                                     extra_body={"ignore_eos": True}) for k in range(4)] + [long])
    assert result["n"] > 700
    assert all(len(g) >= 200 for g in gaps)
    # the prompt's chunks were processed in the last prompt_ms before its answer; in that window every
    # stream still running gets a token each step (an unchunked prompt would hold them all for it).
    # Counted in tokens, not only in seconds: a busy machine stretches every step alike.
    end = result["t1"]
    start = end - result["prompt_ms"] / 1e3
    running = [g for g in gaps if g[0] < start and g[-1] > end]
    assert running, "no stream was running while the prompt was processed"
    inside = [sum(1 for t in g if start <= t <= end) for g in running]
    assert all(n >= 2 for n in inside), (inside, result["prompt_ms"])
    during = [b - a for g in running for a, b in zip(g, g[1:]) if a >= start and b <= end]
    assert during and max(during) < 0.85 * (end - start), (max(during or [0]), result["prompt_ms"])


def test_prefix_cache_hits_are_reported_and_a_second_turn_computes_only_new_tokens(server):
    c = server.client()
    system = {"role": "system", "content": "You are Bob, a terse assistant who loves prime numbers."}
    turn1 = [system, {"role": "user", "content": "Name a prime."}]
    r1 = c.chat.completions.create(model="x", messages=turn1, max_tokens=12, temperature=0)
    assert r1.usage.prompt_tokens_details.cached_tokens < 8  # at most the template's opening, seen before
    turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                     {"role": "user", "content": "And another one?"}]
    r2 = c.chat.completions.create(model="x", messages=turn2, max_tokens=12, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens  # the first turn's prompt and its answer were kept
    timings = r2.model_extra["timings"]
    assert timings["cache_n"] == cached and timings["prompt_n"] == r2.usage.prompt_tokens - cached
    # the same system prompt in a new conversation reuses it too; cache_prompt: false opts out
    other = [system, {"role": "user", "content": "Is 9 prime?"}]
    r3 = c.chat.completions.create(model="x", messages=other, max_tokens=4, temperature=0)
    assert r3.usage.prompt_tokens_details.cached_tokens > 10
    r4 = c.chat.completions.create(model="x", messages=other, max_tokens=4, temperature=0,
                                   extra_body={"cache_prompt": False})
    assert r4.usage.prompt_tokens_details.cached_tokens == 0
    assert r4.choices[0].message.content == r3.choices[0].message.content  # reuse changes no bit


def test_streamed_usage_reports_cached_tokens(server):
    chunks = list(server.client().chat.completions.create(
        model="x", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the first test left it in a slot


def test_fast_batching_server(smollm2_path):
    """`serve --batching fast`: every stream is served, /props says it is not batch invariant."""
    s = Server("-m", str(smollm2_path), "--parallel", "4", "-c", "2048", "--batching", "fast", "-a", "x")
    try:
        out = concurrently([lambda i=i: stream(s, i, max_tokens=12) for i in range(6)])
        assert all(out)
        props = __import__("json").loads(s.get("/props")[1])
        assert props["batch_invariant"] is False and props["batching"]["mode"] == "fast"
    finally:
        s.stop()
