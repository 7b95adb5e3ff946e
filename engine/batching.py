"""Continuous batching: one forward pass per step over every active sequence of a model.

A server model has `parallel` slots, each an Engine with its own KV cache over the model's shared
weights. Without batching each slot decodes on its own, and every slot reads all the weights for
every token; decode is memory-bound, so N slots cost N times the bandwidth. Here the slots' caches
are attached to one `BatchScheduler`: `generate.prefill` and `generate.decode` hand their tokens to
it (`cache.run`) and wait, and the scheduler's thread runs, each step, one forward pass over the next
token of every decoding sequence and chunks of waiting prompts, then hands each its logits. The
request threads (Engine._stream: sampling, stop strings, streaming) are unchanged.

Steps:
  * decode tokens first, all of them; then prompt chunks in arrival order while the step's token
    budget (llama.cpp's -b) allows, at least one thing per step. A prompt is cut into chunks by its
    own thread (generate.prefill's batch, llama.cpp's -ub), so a long prompt takes one chunk per
    step and the streams already decoding get a token every step (chunked prefill).
  * sequences join between steps; a sequence that decoded in the last step is waited for a moment
    (`gather_s`, or a quarter of the last step's time if that is longer: its thread is sampling, and
    with 16 streams the samplers, one after another under the GIL, take a good part of a step; one
    that misses a step costs a whole extra step later) so that it does not miss the next one; one
    that left (finished, cancelled) is not.
  * a sequence whose tokens do not fit its cache gets ContextFull alone; a failing pass fails the
    sequences in it, never the scheduler.

KV cache: per-sequence regions. Each slot's cache is its region of the model's pool (`-c` in all,
`n_ctx / parallel` a slot, as llama-server divides it; models/common.py KVPool). Where the backend
takes attention spans (the CPU backends), a step writes every sequence's keys and values with one
`kv_scatter` a layer and runs one attention call over the pool, each query token limited to its own
region; elsewhere (the devices, for now) attention runs per sequence over its region. The products run
over all rows at once. Regions rather than paged blocks: the attention kernels already take one
contiguous cache, and a prefix is shared by choosing the slot that holds it (engine/server/slots.py)
rather than by block tables.

Batch invariance: products group a pass's rows by role through `path` (kernels/base.py): decode rows
with "rows", prompt rows with "tiles", so each row is computed exactly as it is in a pass of any other
size or company; attention runs per sequence, and on the CPU in llama.cpp mode computes each query row
alone. On such backends (`batch_invariant`: the CPU in its default llama.cpp mode) a request's tokens
are the same alone or beside others. `exact=False` (serve --batching fast) trades that for throughput:
each step's products then run as one product over all its rows (batched_slots). The device backends
do not promise it yet (their matrix-vector and tiled kernels round differently), nor does the NumPy
reference (BLAS), and /props says so.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .models.common import ContextFull


class _Rows:
    """A backend as one batched pass sees it: products take the first `n_decode` rows (the decode
    tokens, which lead every step) with path "rows" and the rest (prompt tokens) with "tiles"."""

    def __init__(self, be, n_decode: int):
        self._be, self._n_decode = be, n_decode

    def __getattr__(self, name):
        return getattr(self._be, name)

    def _split(self, x, run):
        nd, n = self._n_decode, len(x)
        if nd >= n:
            return run(x, slice(None), "rows")
        if nd == 0:
            return run(x, slice(None), "tiles")
        return self._be.concat_rows([run(x[:nd], slice(0, nd), "rows"), run(x[nd:], slice(nd, n), "tiles")])

    def matmul(self, x, w, bias=None):
        return self._split(x, lambda part, _, path: self._be.matmul(part, w, bias, path=path))

    def matmul_experts(self, x, w, ids, bias=None):
        return self._split(x, lambda part, rows, path: self._be.matmul_experts(
            part, w, ids if rows == slice(None) else ids[rows], bias, path=path))


class Work:
    """Tokens of one sequence for the next step: a decode token or a prompt chunk. `done` is set when
    its step has run; a step its own thread runs (a lone sequence, the warm-up) needs none."""

    __slots__ = ("cache", "tokens", "decode", "logits", "done", "result", "error")

    def __init__(self, cache, tokens, decode: bool, logits: str, queued: bool = False):
        self.cache, self.tokens, self.decode, self.logits = cache, list(tokens), decode, logits
        self.done = threading.Event() if queued else None
        self.result, self.error = None, None

    def finish(self):
        if self.done is not None:
            self.done.set()


class BatchCache:
    """What DecoderModel.forward asks of a cache, answered for the sequences of one step: positions
    of each, attention per sequence over its own cache, and the logits rows each asked for."""

    def __init__(self, works: list[Work], exact: bool = True):
        self.works, self.exact = works, exact
        self.n_decode = sum(1 for w in works if w.decode)  # the decode rows lead (see BatchScheduler._choose)
        # sequences that are all regions of one KVPool share one KV write and one attention call a layer
        pool = getattr(works[0].cache, "pool", None) if works else None
        self.pool = pool if pool is not None and all(getattr(w.cache, "pool", None) is pool for w in works) else None
        if self.pool is not None:
            c = [w.cache for w in works]
            n = [len(w.tokens) for w in works]
            self.rows = np.concatenate([np.arange(x.base + x.n_past, x.base + x.n_past + k) for x, k in zip(c, n)])
            self.lo = np.repeat([x.base for x in c], n).astype(np.int64)          # each token's region
            self.hi = np.repeat([x.base + x.n_past + k for x, k in zip(c, n)], n).astype(np.int64)  # ..its end

    def check_room(self, n: int):
        for w in self.works:
            w.cache.check_room(len(w.tokens))

    def positions(self, n: int) -> np.ndarray:
        return np.concatenate([w.cache.positions(len(w.tokens)) for w in self.works])

    def view(self, be):
        """Exact: decode rows and prompt rows on their fixed paths. Fast: the backend as it is, so a
        step's rows go through one product (the tiled GEMM once there are more than a few)."""
        return _Rows(be, self.n_decode) if self.exact else be

    def attend(self, layer: int, be, q, k, v, pos, **kw):
        if self.pool is not None:  # one write and one attention call for all (KVPool)
            pk, pv = self.pool.k[layer], self.pool.v[layer]
            be.kv_scatter(pk, k, self.rows)
            be.kv_scatter(pv, v, self.rows)
            return be.attention(q, pk, pv, pos, kv_pos=self.pool.kv_pos, spans=(self.lo, self.hi), **kw)
        out, a = [], 0
        for w in self.works:
            b = a + len(w.tokens)
            out.append(w.cache.attend(layer, be, q[a:b], k[a:b], v[a:b], pos[a:b], **kw))
            a = b
        return be.concat_rows(out)

    def advance(self, n: int):
        for w in self.works:
            w.cache.advance(len(w.tokens))

    def logit_rows(self, h, last_only: bool):
        parts, a = [], 0
        for w in self.works:
            b = a + len(w.tokens)
            if w.logits == "last":
                parts.append(h[b - 1:b])
            elif w.logits == "all":
                parts.append(h[a:b])
            a = b
        if not parts:  # no sequence wants logits from this step (prompt chunks before their last)
            return h[len(h) - 1:]
        return parts[0] if len(parts) == 1 else h.be.concat_rows(parts) if hasattr(h, "be") else np.concatenate(parts)

    def hand_out(self, logits: np.ndarray):
        """Each sequence's rows of the pass's logits (host array, rows in `logit_rows` order)."""
        r = 0
        for w in self.works:
            n = {"last": 1, "all": len(w.tokens)}.get(w.logits, 0)
            w.result = logits[r:r + n] if n else None
            r += n


class BatchScheduler:
    """One per loaded model: a thread that runs the steps. `attach` makes a cache one of its slots."""

    GATHER_FRACTION = 0.25  # of the last step's time, the longest wait for a sequence of that step

    def __init__(self, model, budget: int = 512, gather_s: float = 0.003, exact: bool = True):
        if budget < 1:
            raise ValueError(f"the step budget must be at least 1 token, not {budget}")
        self.model, self.budget, self.gather_s, self.exact = model, int(budget), gather_s, bool(exact)
        self._cv = threading.Condition()
        self._pending: list[Work] = []
        self._expected: set[int] = set()   # caches that decoded in the last step (they usually come back)
        self._closed = False
        self._busy = False                  # a step is running (on the scheduler's thread or a lone sequence's)
        self.steps = 0                      # passes run
        self.rows = 0                       # tokens through them
        self.max_batch = 0                  # most sequences in one step
        self._last_step_s = 0.0
        self._replay_of = self._replay_step = None  # (see _replay)
        self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
        self._thread.start()

    @property
    def _replay(self):
        """A device backend's recorded decode step (kernels/gpu/graphs.py), where it runs the whole model;
        it runs only where batch invariance is not promised anyway (the devices). Worked out once per
        placement (a lone stream asks every step; the placement's backends, ~70 ids, took ~5 us)."""
        place = self.model.place
        if self._replay_of is not place:
            be = place.single
            replays = be is not None and not self.batch_invariant
            self._replay_step = getattr(be, "decode_graph", None) if replays else None
            self._replay_of = place
        return self._replay_step

    @property
    def batch_invariant(self) -> bool:
        return self.exact and all(getattr(be, "batch_invariant", False) for be in self.model.place.backends())

    def attach(self, cache):
        """Route `generate.prefill/decode` on `cache` through this scheduler."""
        cache.run = lambda tokens, decode, logits="last": self.run(cache, tokens, decode, logits)
        cache.leave = lambda: self.leave(cache)
        cache.scheduler = self
        return cache

    def run(self, cache, tokens, decode: bool, logits: str = "last"):
        """Put `tokens` of `cache`'s sequence into a coming step; wait; its logits rows (host).

        A lone decoding sequence (nothing pending, no step running, no other sequence expected back)
        runs its step here, on its own thread: the same `_step` the scheduler's thread would run, less
        two thread switches a token. In a server those switches are GIL handoffs that wait for
        whatever Python the event loop is running: a lone SmolLM2 stream on 2 vCPUs, alternating with
        the previous server, 96-99 -> 100-106 tokens/s (a single-slot server: 105-118). Anything that
        arrives meanwhile waits for the scheduler's next step, which gathers this sequence's next token
        with it."""
        if logits not in ("last", "all", "none"):
            raise ValueError(f"logits must be 'last', 'all' or 'none', not {logits!r}")
        if not tokens:
            raise ValueError("a step needs at least one token of the sequence")
        with self._cv:
            if self._closed:
                raise RuntimeError("the model's batch scheduler is closed")
            alone = decode and not self._pending and not self._busy and self._expected <= {id(cache)}
            w = Work(cache, tokens, decode, logits, queued=not alone)
            if alone:
                self._busy = True
            else:
                self._pending.append(w)
                self._cv.notify_all()
        if alone:
            try:
                self._step([w])
            finally:
                with self._cv:
                    self._busy = False
                    self._expected = {id(cache)}
                    if self._pending:  # else the scheduler's thread would wake for nothing, on a CPU the next
                        # pass needs (with no Event for a lone step: its gap between passes 0.26 -> 0.21 ms)
                        self._cv.notify_all()
        else:
            w.done.wait()
        if w.error is not None:
            raise w.error
        return w.result

    def warm_up(self, caches):
        """One prompt step and one decode step of two sequences, before any request: a JIT backend (the
        Numba CPU backend) compiles the kernels batched steps take (products of a few rows, pooled
        attention) now, at load, rather than in the first batched step of a serving server, where the
        compilation (seconds, holding the GIL) would stall every stream and /health. The caches are
        emptied again."""
        for decode, tokens in ((False, [1, 2]), (True, [3])):
            works = [Work(c, tokens, decode, "last") for c in caches]
            self._step(works)
            for w in works:
                if w.error is not None:
                    raise w.error
        for c in caches:
            c.truncate(0)
        self.steps = self.rows = self.max_batch = 0
        self._last_step_s = 0.0  # (a compiling step's time would set the first real step's gather wait)

    def leave(self, cache):
        """`cache`'s sequence is done (finished, cancelled): the next step does not wait for it."""
        with self._cv:
            self._expected.discard(id(cache))
            self._cv.notify_all()

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    # --- the thread

    def _loop(self):
        while True:
            with self._cv:
                while (not self._pending or self._busy) and not self._closed:
                    self._cv.wait()
                if self._closed:
                    for w in self._pending:
                        w.error = RuntimeError("the model's batch scheduler is closed")
                        w.finish()
                    return
                self._gather()
                works = self._choose()
                self._busy = True
            try:
                self._step(works)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _gather(self):
        """Wait (at most gather_s) for the sequences of the last step still to come back."""
        deadline = time.monotonic() + max(self.gather_s, self.GATHER_FRACTION * self._last_step_s)
        while True:
            missing = self._expected - {id(w.cache) for w in self._pending}
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return
            self._cv.wait(left)

    def _choose(self) -> list[Work]:
        """This step's work, taken from the pending list: every decode token, then prompt chunks in
        arrival order within the budget; always at least one."""
        decode = [w for w in self._pending if w.decode]
        used = len(decode)
        prompts = []
        for w in self._pending:
            if not w.decode and (used + len(w.tokens) <= self.budget or not (decode or prompts)):
                prompts.append(w)
                used += len(w.tokens)
        chosen = decode + prompts
        taken = {id(w) for w in chosen}
        self._pending = [w for w in self._pending if id(w) not in taken]
        self._expected = {id(w.cache) for w in decode}
        return chosen

    def _step(self, works: list[Work]):
        ok = []
        for w in works:
            try:
                w.cache.check_room(len(w.tokens))
                ok.append(w)
            except ContextFull as e:
                w.error = e
                w.finish()
        if not ok:
            return
        t0 = time.monotonic()
        try:
            tokens = [t for w in ok for t in w.tokens]
            if len(ok) == 1 and ok[0].decode:
                # one stream decoding: the step it would run without batching (the device's recorded step
                # where there is one), without the batch's views; a lone token's products and attention
                # are the same either way (the "rows" path of one token is the plain matrix-vector one)
                replay = self._replay
                if replay is not None:
                    ok[0].result = replay(self.model, ok[0].cache, tokens[0])
                else:
                    ok[0].result = self.model.place.output.to_numpy(self.model.forward(tokens, ok[0].cache))
            else:
                bc = BatchCache(ok, self.exact)
                out = self.model.forward(tokens, bc)
                bc.hand_out(self.model.place.output.to_numpy(out))
            self.steps += 1
            self.rows += len(tokens)
            self.max_batch = max(self.max_batch, len(ok))
        except Exception as e:  # noqa: BLE001 -- the sequences of this pass get it; the scheduler goes on
            for w in ok:
                w.error = e
        finally:
            self._last_step_s = time.monotonic() - t0
            for w in ok:
                w.finish()

    def stats(self) -> dict:
        return {"steps": self.steps, "tokens": self.rows, "max_batch": self.max_batch, "budget": self.budget,
                "batch_invariant": self.batch_invariant, "mode": "exact" if self.exact else "fast"}


def batched_slots(engine, parallel: int, budget: int = 512, exact: bool = True) -> list:
    """`parallel` Engines over `engine`'s model (its weights, its backend), each with its region of the
    KV pool (`engine.n_ctx / parallel` positions) as a slot of one BatchScheduler.

    exact=False (serve --batching fast) gives up batch invariance for speed: a step's products run as
    one matrix product over all its rows, the tiled GEMM of the prompt path (several times the
    multiply-adds per second of the row-by-row dots on the CPU), so with many streams the throughput
    is higher, and a request's tokens may differ by rounding from what it gets alone, as in
    llama-server and vLLM."""
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, not {parallel}")
    n_ctx = engine.n_ctx // parallel
    if n_ctx < 1:
        raise ValueError(f"a context of {engine.n_ctx} cannot be divided among {parallel} slots")
    sched = BatchScheduler(engine.model, budget, exact=exact)
    slots = []
    for cache in engine.model.new_caches(n_ctx, parallel):
        e = type(engine)(engine.gguf, engine.model, engine.backend, engine.tokenizer, n_ctx, cache)
        e.model.n_ctx = engine.n_ctx  # the served context (Phi-3 picks its RoPE factors by it), not a slot's
        sched.attach(e.cache)
        slots.append(e)
    if parallel > 1 and engine.model.compute_thread() is not None:
        sched.warm_up([s.cache for s in slots[:2]])
    return slots
