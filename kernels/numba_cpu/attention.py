"""Attention on the CPU as Numba kernels, with the semantics of `kernels.ops_numpy` (NumbaOps.attention
in ops.py prepares the arguments and calls these).

Attention is a two-pass softmax per work item (token t, kv head g, kv chunk c) covering the
n_head/n_head_kv query heads that share kv head g, so each K and V row is loaded once per group:
pass 1 computes the visible scores and their max, pass 2 exponentiates and accumulates V. When there
are few items (decode with few kv heads) the kv range is split into chunks whose partial
(max, sum, unnormalised output) are merged afterwards (split-K, "flash-decoding") -- in the exact f32
mode only: llama.cpp mode rounds each normalised probability to f16 before it multiplies V, which needs
the whole row's max and sum first. There, fewer items than threads split the group of query heads
instead (`_head_split`), which changes no head's arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, njit, prange, types
from numba.core import errors
from numba.extending import overload

from .activations import to_f16
from .half import kv_value
from .op_math import _JIT, _JIT_FAST, NEG_INF, ONE, ZERO, _exp
from .rows_common import prefetch, stack_f32
from .thin_drivers import thin

ATTN_PREFETCH = 16  # attention asks for the K and V rows this many rows ahead of the ones it reads:
# a long cache streams from DRAM (SmolLM2 at 2048 positions: 94 MB of keys and values a token) and the
# hardware prefetchers alone left the score and weighted-sum loops stalled. SmolLM2 tg32 @ d2048
# 35.5-35.9 -> 45.4-46.1 t/s, @ d512 75.4-76.3 -> 86.3-86.7 (alternating; 4, 8, 16, 32 rows ahead
# tried, 16 best); the same call on a cache-hot copy at 2048 positions 232 -> 179 us.


# --- attention


@njit(inline="always", **_JIT)
def _score(a, scale, softcap, inv_cap, cap_on):
    """One attention score as ggml computes it without flash attention: the raw q.k, soft-capped when
    softcap > 0 (ggml_scale by 1/cap, tanh, ggml_scale by cap), then soft_max_ext's scale."""
    if cap_on and softcap > ZERO:
        a = np.float32(math.tanh(a * inv_cap)) * softcap
    return a * scale


def _make_attention(P16: bool, SINKS: bool, CAP: bool):
    """The work item of attention for one combination of the options a model fixes: P16 (llama.cpp
    mode's f16 probabilities), SINKS (gpt-oss), CAP (Gemma 2's soft-capping). Closure constants, so numba
    drops the other paths before compiling: a model compiles only its own (the llama/Gemma 3 kernel in
    ~2.2 s, where one kernel holding every path took ~3.3 s of a first run). Not cached by itself: it is
    compiled into its variant's parallel driver (`_make_attn_par`), which is."""

    @njit(**_JIT_ITEM)
    def _attn_chunk(q, k, v, t, g, h0, group, j0, j1, qp, kv_pos, scale, window, m, l, acc, sinks, softcap):
        """The `group` query heads h0.. of kv head g (token t) against kv rows [j0, j1): per head the max m
        of the visible scores, the sum l of exp(s - m) and the unnormalised output acc = sum exp(s - m) v.
        With P16 (one chunk only) it does what ggml does without flash attention: the probabilities are
        normalised (sinks included) and rounded to f16 before they multiply V; acc is then the output.
        softcap > 0 caps each raw score q.k as softcap*tanh(q.k/softcap) before the scale (Gemma 2)."""
        d_k = q.shape[2]
        d_v = v.shape[2]
        for r in range(group):
            m[r] = NEG_INF
            l[r] = 0.0
            for d in range(d_v):
                acc[r, d] = ZERO
        # the visible rows, compacted: causal and sliding-window masks cost nothing below
        idx = np.empty(max(j1 - j0, 1), np.int64)
        nv = 0
        for j in range(j0, j1):
            kp = kv_pos[j]
            if kp >= 0 and kp <= qp and (window <= 0 or qp - kp < window):
                idx[nv] = j
                nv += 1
        if nv == 0:
            return
        g4 = (group + 3) // 4 * 4  # rows past the group weigh 0 in the 4-head blocks of the weighted sum
        s = np.empty((g4, nv), np.float32)
        for r in range(group, g4):
            for p in range(nv):
                s[r, p] = ZERO
        inv_cap = ONE / softcap if CAP and softcap > ZERO else ZERO
        # scores, four kv rows at a time (each q element loaded once for four dot products); the rows
        # ATTN_PREFETCH ahead are asked for meanwhile (a long cache streams from DRAM)
        n_kv_head = k.shape[1]
        lines_k = (d_k * k.itemsize + 63) // 64
        p = 0
        while p + 4 <= nv:
            ja, jb, jc, jd = idx[p], idx[p + 1], idx[p + 2], idx[p + 3]
            if p + ATTN_PREFETCH + 4 <= nv:
                for f in range(4):
                    base = (idx[p + ATTN_PREFETCH + f] * n_kv_head + g) * d_k * k.itemsize
                    for c in range(lines_k):
                        prefetch(k, base + 64 * c)
            for r in range(group):
                a0 = ZERO
                a1 = ZERO
                a2 = ZERO
                a3 = ZERO
                for d in range(d_k):
                    qd = q[t, h0 + r, d]
                    a0 += qd * kv_value(k[ja, g, d])
                    a1 += qd * kv_value(k[jb, g, d])
                    a2 += qd * kv_value(k[jc, g, d])
                    a3 += qd * kv_value(k[jd, g, d])
                s[r, p] = _score(a0, scale, softcap, inv_cap, CAP)
                s[r, p + 1] = _score(a1, scale, softcap, inv_cap, CAP)
                s[r, p + 2] = _score(a2, scale, softcap, inv_cap, CAP)
                s[r, p + 3] = _score(a3, scale, softcap, inv_cap, CAP)
            p += 4
        while p < nv:
            ja = idx[p]
            for r in range(group):
                a0 = ZERO
                for d in range(d_k):
                    a0 += q[t, h0 + r, d] * kv_value(k[ja, g, d])
                s[r, p] = _score(a0, scale, softcap, inv_cap, CAP)
            p += 1
        # softmax numerators (vectorized exp), then the weighted sum of V rows
        for r in range(group):
            mr = NEG_INF
            for p in range(nv):
                mr = max(mr, s[r, p])
            m[r] = mr
            if P16:  # ggml_soft_max_ext: the max includes the sink, then exp, sum, scale, f16
                sk = sinks[h0 + r] if SINKS else NEG_INF
                mx = max(mr, sk)
                tot = 0.0
                for p in range(nv):  # ggml's vectorized expf (ggml_v_expf) is no libm expf either
                    e = _exp(s[r, p] - mx)
                    s[r, p] = e
                    tot += np.float64(e)
                if SINKS:
                    tot += np.float64(np.exp(sk - mx))
                inv = np.float32(1.0 / tot)
                for p in range(nv):
                    s[r, p] = to_f16(s[r, p] * inv)
                continue
            tot = 0.0
            for p in range(nv):
                e = _exp(s[r, p] - mr)
                s[r, p] = e
                tot += np.float64(e)
            l[r] = tot
        lines_v = (d_v * v.itemsize + 63) // 64
        # 4 heads x 16 columns at a time: their sums stay in registers over all the rows (a stack array
        # indexed by constants) and each V element is widened once for the 4 heads. A row after row, head
        # after head loop loaded and stored every sum for every row: 40% of a decode token's attention.
        # Each sum still adds the rows in order, the same bits.
        for r0 in range(0, group, 4):
            for d0 in range(0, d_v - d_v % 16, 16):
                a4 = carray(stack_f32(64), 64)
                for i in range(64):
                    a4[i] = ZERO
                for p in range(nv):
                    j = idx[p]
                    if d0 == 0 and p + ATTN_PREFETCH < nv:
                        base = (idx[p + ATTN_PREFETCH] * n_kv_head + g) * d_v * v.itemsize
                        for c in range(lines_v):
                            prefetch(v, base + 64 * c)
                    e0 = s[r0, p]
                    e1 = s[r0 + 1, p]
                    e2 = s[r0 + 2, p]
                    e3 = s[r0 + 3, p]
                    for i in range(16):
                        vv = kv_value(v[j, g, d0 + i])
                        a4[i] += e0 * vv
                        a4[16 + i] += e1 * vv
                        a4[32 + i] += e2 * vv
                        a4[48 + i] += e3 * vv
                for rr in range(min(4, group - r0)):
                    for i in range(16):
                        acc[r0 + rr, d0 + i] = a4[16 * rr + i]
            for p in range(nv):  # the last d_v % 16 columns
                j = idx[p]
                for r in range(r0, min(r0 + 4, group)):
                    e = s[r, p]
                    for d in range(d_v - d_v % 16, d_v):
                        acc[r, d] += e * kv_value(v[j, g, d])


    @njit(**_JIT_ITEM)
    def _attn_item(it, q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf, lbuf, abuf,
                   softcap):
        n_tok, n_head = q.shape[0], q.shape[1]
        n_head_kv = k.shape[1]
        d_v = v.shape[2]
        c = it % n_chunks
        rest = it // n_chunks
        # the query heads sharing kv head g, in n_split parts (one part but for a few tokens: see attention)
        sub = rest % n_split
        rest = rest // n_split
        g = rest % n_head_kv
        ti = rest // n_head_kv
        per_kv = n_head // n_head_kv
        part = (per_kv + n_split - 1) // n_split
        h0 = g * per_kv + sub * part
        group = min(part, (g + 1) * per_kv - h0)
        if group <= 0:
            return
        # zigzag over tokens: prange splits items into contiguous ranges, and with a causal mask late
        # tokens cost more; pairing early and late tokens balances the threads.
        t = ti // 2 if ti % 2 == 0 else n_tok - 1 - ti // 2
        # token t sees cache rows [lo[t], hi[t]) (its sequence's region of a pooled cache; the whole cache
        # alone), in n_chunks pieces
        csize = (hi[t] - lo[t] + n_chunks - 1) // n_chunks
        j0 = min(hi[t], lo[t] + c * csize)
        j1 = min(hi[t], j0 + csize)
        m = np.empty(group, np.float32)
        l = np.empty(group, np.float64)
        acc = np.empty((group, d_v), np.float32)
        _attn_chunk(q, k, v, t, g, h0, group, j0, j1, q_pos[t], kv_pos, scale, window, m, l, acc, sinks, softcap)
        if P16:
            for r in range(group):
                for d in range(d_v):
                    out[t, h0 + r, d] = acc[r, d] if m[r] != NEG_INF else ZERO
            return
        if n_chunks > 1:
            for r in range(group):
                mbuf[t, h0 + r, c] = m[r]
                lbuf[t, h0 + r, c] = l[r]
                for d in range(d_v):
                    abuf[t, h0 + r, c, d] = acc[r, d]
            return
        for r in range(group):
            h = h0 + r
            mx = m[r]
            if SINKS and sinks[h] > mx:
                mx = sinks[h]
            if mx == NEG_INF:
                for d in range(d_v):
                    out[t, h, d] = ZERO
                continue
            w = np.exp(m[r] - mx)
            tot = l[r] * np.float64(w)
            if SINKS:
                tot += np.float64(np.exp(sinks[h] - mx))
            f = w * np.float32(1.0 / tot)
            for d in range(d_v):
                out[t, h, d] = acc[r, d] * f

    return _attn_item


_JIT_ITEM = dict(_JIT_FAST, cache=False)
_ATTN_ITEMS: dict = {}


def attn_item(variant, it, q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf, lbuf,
              abuf, softcap):  # pragma: no cover - overloaded below
    """Work item `it` of attention variant `variant` (P16 * 4 + SINKS * 2 + CAP, a literal)."""
    raise NotImplementedError


@overload(attn_item, jit_options=_JIT_FAST)
def _attn_item_of(variant, it, q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf,
                  lbuf, abuf, softcap):
    if not isinstance(variant, types.IntegerLiteral):
        raise errors.RequireLiteralValue(variant)
    key = variant.literal_value
    item = _ATTN_ITEMS.get(key)
    if item is None:
        item = _ATTN_ITEMS.setdefault(key, _make_attention(bool(key & 4), bool(key & 2), bool(key & 1)))
    def call(variant, it, q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf, lbuf,
             abuf, softcap):
        return item(it, q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf, lbuf, abuf,
                    softcap)

    return call


def _make_attn_par(VARIANT: int):
    """The parallel driver of an attention variant: a closure over its number only (numba's disk cache
    keys a closure by its constants), the item reached through the `attn_item` overload."""

    @thin
    @njit(parallel=True, **_JIT)
    def _attn_par(q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split, out, mbuf, lbuf, abuf,
                  softcap):
        n_items = q.shape[0] * k.shape[1] * n_split * n_chunks
        for it in prange(n_items):  # as int64: prange counts in uint64, and an item function called with
            # both would be compiled (~1 s each) once per index type
            attn_item(VARIANT, np.int64(it), q, k, v, q_pos, kv_pos, lo, hi, scale, window, sinks, n_chunks, n_split,
                      out, mbuf, lbuf, abuf, softcap)

    return _attn_par


_ATTENTION: dict = {}


def _attention_kernel(p16: bool, sinks: bool, softcap: bool):
    """The compiled attention for these options (see _make_attention), made on first use."""
    variant = 4 * bool(p16) + 2 * bool(sinks) + bool(softcap)
    fn = _ATTENTION.get(variant)
    if fn is None:
        fn = _ATTENTION.setdefault(variant, _make_attn_par(variant))
    return fn


@njit(parallel=True, **_JIT_FAST)
def _attn_combine(mbuf, lbuf, abuf, sinks, has_sinks, out):
    n_tok, n_head, n_chunks = mbuf.shape
    d_v = out.shape[2]
    for it in prange(n_tok * n_head):
        t = it // n_head
        h = it % n_head
        mx = NEG_INF
        for c in range(n_chunks):
            mx = max(mx, mbuf[t, h, c])
        if has_sinks:
            mx = max(mx, sinks[h])
        o = out[t, h]
        for d in range(d_v):
            o[d] = ZERO
        if mx == NEG_INF:
            continue
        tot = 0.0
        for c in range(n_chunks):
            if mbuf[t, h, c] == NEG_INF:
                continue
            w = np.exp(mbuf[t, h, c] - mx)
            tot += lbuf[t, h, c] * np.float64(w)
            for d in range(d_v):
                o[d] += w * abuf[t, h, c, d]
        if has_sinks:
            tot += np.float64(np.exp(sinks[h] - mx))
        f = np.float32(1.0 / tot)
        for d in range(d_v):
            o[d] = o[d] * f
