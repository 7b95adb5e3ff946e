"""Elementwise ops as Numba kernels, and the backend's attention over attention.py's, with the semantics
of `kernels.ops_numpy`.

The activations have a serial and a parallel driver around the same block function: small inputs
(decode) skip the cost of starting the thread pool (~2 us of a decode token's 3 us SwiGLU). Attention
has the parallel one only: a serial twin cost ~1.5 s of a first run's compiling, and at decode sizes
the parallel kernel is no slower (SmolLM2, 100 cached tokens, 2 threads: 12 us against 14). RMSNorm,
RoPE and softmax only have a serial one: a prompt's are a few microseconds a row, a parallel driver
took ~1-2 s more to compile on a first run (Numba's parallel loops compile slowly; see warm.py) and ran
no faster on 2 cores (a 128-token prompt of SmolLM2: RMSNorm 16 us either way, RoPE 90-180 us serial
against 470 us and more parallel, the pool's wake-up dominating). RoPE and the KV cache write are one
kernel (`_rope_store_ser`; `rope` alone is that kernel with no keys to store).

rope and gelu do the same float32 operations as the reference (gelu bit for bit: the fp16 rounding is done with integer ops); rms_norm too, but its
double sum is reassociated so that it vectorizes. softmax, silu and attention use a vectorizable
polynomial exp (`_exp`, within 3e-7 of expf; ggml's SIMD paths use their own polynomial too) and
'reassoc' so that dot products and sums vectorize.

Attention's kernels are in attention.py.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ..base import RopeParams
from . import pool
from .activations import f16_rounded
from .attention import _attention_kernel, _attn_combine
from .compute_thread import pinned
from .half import kernel_view, kv_put, writable_view
from .op_math import _JIT, _JIT_FAST, MIN_RAMP, NEG_INF, ONE, PAR_MIN, TEN, TWO24, ZERO, _exp
from .thin_drivers import thin
from ..ops_numpy import (
    GELU_F16_TABLE,
    NumpyOps,
    check_attention,
    check_rope,
    check_spans,
    rope_freq_factors,
    rope_scalars,
)


# --- rms_norm


@njit(**_JIT_FAST)
def _rms_row(x, w, has_w, eps, y):
    n = x.shape[0]
    s = 0.0
    for j in range(n):
        v = x[j] * x[j]
        s += np.float64(v)
    mean = np.float32(s / n)
    scale = ONE / np.sqrt(mean + eps)
    if has_w:
        for j in range(n):
            y[j] = (x[j] * scale) * w[j]
    else:
        for j in range(n):
            y[j] = x[j] * scale


@thin
@njit(**_JIT)
def _rms_norm_ser(x, w, has_w, eps, y):
    for i in range(x.shape[0]):
        _rms_row(x[i], w, has_w, eps, y[i])


# --- rope


@njit(inline="always", **_JIT)
def _rope_cache(pos, half, theta_scale, freq_scale, ext_factor, mscale, low, high, ff, has_ff, cs, sn):
    """ggml_rope_cache_init for one position: cos/sin of each pair, mscale included."""
    theta = np.float32(pos)
    span = high - low
    denom = MIN_RAMP if MIN_RAMP > span else span
    for i in range(half):
        te = theta / ff[i] if has_ff else theta
        ti = freq_scale * te
        if ext_factor != ZERO:
            y = (np.float32(i) - low) / denom
            r = ONE - min(ONE, max(ZERO, y))
            mix = r * ext_factor
            th = ti * (ONE - mix) + te * mix
        else:
            th = ti
        cs[i] = np.float32(math.cos(np.float64(th))) * mscale
        sn[i] = np.float32(math.sin(np.float64(th))) * mscale
        theta = theta * theta_scale


@njit(inline="always", **_JIT)
def _rope_apply(x, out, t, n_dims, neox, cs, sn):
    """Token t of x (n_tok, n_head, head_dim) rotated by the pairs' cos/sin into out."""
    half = n_dims // 2
    n_head, head_dim = x.shape[1], x.shape[2]
    for h in range(n_head):
        xr = x[t, h]
        yr = out[t, h]
        if neox:
            for i in range(half):
                x0 = xr[i]
                x1 = xr[i + half]
                yr[i] = x0 * cs[i] - x1 * sn[i]
                yr[i + half] = x0 * sn[i] + x1 * cs[i]
        else:
            for i in range(half):
                x0 = xr[2 * i]
                x1 = xr[2 * i + 1]
                yr[2 * i] = x0 * cs[i] - x1 * sn[i]
                yr[2 * i + 1] = x0 * sn[i] + x1 * cs[i]
        for d in range(n_dims, head_dim):
            yr[d] = xr[d]


@njit(**_JIT)
def _rope_store_ser(q, k, v, pos, n_dims, neox, theta_scale, freq_scale, ext_factor, mscale, low, high, ff, has_ff,
                    q_scale, half, qo, kc, vc, start):
    """rope(q) * q_scale into qo, rope(k) and v into cache rows start.. (f16 bits into an f16 cache; into a
    float32 one f16-rounded with `half`, half.kv_put): the
    arithmetic of rope, rope, the scaling and two kv_store calls, in one call (see NumbaOps.rope_kv_store).
    `rope` alone is this kernel with k and v of no heads: one kernel to compile (~1 s of a first run) for both.
    Not thin (thin_drivers.py): the RoPE and the rounding are inlined here, in its own module."""
    n_half = n_dims // 2
    cs = np.empty(n_half, np.float32)
    sn = np.empty(n_half, np.float32)
    kr = np.empty_like(k)
    for t in range(q.shape[0]):
        _rope_cache(pos[t], n_half, theta_scale, freq_scale, ext_factor, mscale, low, high, ff, has_ff, cs, sn)
        _rope_apply(q, qo, t, n_dims, neox, cs, sn)
        _rope_apply(k, kr, t, n_dims, neox, cs, sn)
        if q_scale != ONE:
            for h in range(qo.shape[1]):
                for d in range(qo.shape[2]):
                    qo[t, h, d] = qo[t, h, d] * q_scale
        row = start + t
        for h in range(k.shape[1]):
            for d in range(k.shape[2]):
                kv_put(kc, row, h, d, kr[t, h, d], half)
        for h in range(v.shape[1]):
            for d in range(v.shape[2]):
                kv_put(vc, row, h, d, v[t, h, d], half)


# --- softmax


@njit(**_JIT_FAST)
def _softmax_row(x, y):
    n = x.shape[0]
    m = NEG_INF
    for j in range(n):
        m = max(m, x[j])
    s = 0.0
    for j in range(n):
        e = _exp(x[j] - m)
        y[j] = e
        s += np.float64(e)
    inv = np.float32(1.0 / s)
    for j in range(n):
        y[j] = y[j] * inv


@thin
@njit(**_JIT)
def _softmax_ser(x, y):
    for i in range(x.shape[0]):
        _softmax_row(x[i], y[i])


# --- silu, gelu and their gated forms. Elementwise over flat arrays, in blocks of BLOCK elements.

BLOCK = 4096


@njit(inline="always", **_JIT)
def _silu(v):
    return v / (ONE + _exp(-v))


@njit(inline="always", **_JIT)
def _gelu(v, vb):
    """ggml_vec_gelu_f32 with GGML_GELU_FP16: table lookup at fp16(v) (round to nearest even)."""
    if v <= -TEN:
        return ZERO
    if v >= TEN or v != v:
        return v
    u = np.int64(vb)
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a < 0x38800000:  # |v| < 2**-14: fp16 subnormal (or zero), quantum 2**-24
        hb = sign | np.int64(np.rint(abs(v) * TWO24))
    else:  # rebias the exponent, round the mantissa from 23 to 10 bits (ties to even)
        hb = sign | ((a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13)
    return GELU_F16_TABLE[hb]


@njit(**_JIT_FAST)
def _act_block(kind, x, xb, g, y, b):
    i0 = b * BLOCK
    i1 = min(x.shape[0], i0 + BLOCK)
    if kind == 0:
        for i in range(i0, i1):
            y[i] = _silu(x[i])
    elif kind == 1:
        for i in range(i0, i1):
            y[i] = _gelu(x[i], xb[i])
    elif kind == 2:
        for i in range(i0, i1):
            y[i] = _silu(x[i]) * g[i]
    else:
        for i in range(i0, i1):
            y[i] = _gelu(x[i], xb[i]) * g[i]


@thin
@njit(parallel=True, **_JIT)
def _act_par(kind, x, g, y):
    xb = x.view(np.uint32)
    for b in prange((x.shape[0] + BLOCK - 1) // BLOCK):
        _act_block(kind, x, xb, g, y, np.int64(b))


@thin
@njit(**_JIT)
def _act_ser(kind, x, g, y):
    xb = x.view(np.uint32)
    for b in range((x.shape[0] + BLOCK - 1) // BLOCK):
        _act_block(kind, x, xb, g, y, b)




# placeholders for absent optional inputs, made once (~120 op calls a decode token take them)
_NO_WEIGHT = np.zeros(1, np.float32)
_NO_FREQ_FACTORS = np.ones(1, np.float32)
_NO_SPLIT = (np.empty((1, 1, 1), np.float32), np.empty((1, 1, 1), np.float64), np.empty((1, 1, 1, 1), np.float32))
_ZERO_1 = np.zeros(1, np.int64)
_ARANGE = [np.arange(0, dtype=np.int64)]


def _arange(n: int) -> np.ndarray:
    """0..n-1 as int64 (a view of one array kept for the biggest n asked; the kernels only read it)."""
    a = _ARANGE[0]
    if a.shape[0] < n:
        a = _ARANGE[0] = np.arange(max(n, 2 * a.shape[0]), dtype=np.int64)
    return a[:n]


def _f32c(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


_ROPE_CONSTS: dict = {}


def _rope_consts(p: RopeParams) -> tuple:
    """The kernel's constants of a RoPE setting: (n_dims, neox, theta_scale, freq_scale, ext_factor, mscale,
    low, high, freq factors, has them), worked out once per RopeParams (a model keeps its few; ~1 us a
    call otherwise, two calls a layer)."""
    e = _ROPE_CONSTS.get(id(p))
    if e is not None and e[0] is p:
        return e[1]
    ff = rope_freq_factors(p)
    c = (p.n_dims, p.mode == "neox", *rope_scalars(p), _NO_FREQ_FACTORS if ff is None else ff, ff is not None)
    if len(_ROPE_CONSTS) > 64:
        _ROPE_CONSTS.clear()
    _ROPE_CONSTS[id(p)] = (p, c)
    return c


class NumbaOps(NumpyOps):
    """NumpyOps with Numba kernels for the ops a forward pass spends its time in."""

    _warmed = False

    def round_kv(self, x):
        return f16_rounded(x) if self.half_attention else x

    def new_kv(self, n_ctx: int, n_head_kv: int, head_dim: int) -> np.ndarray:
        """In llama.cpp mode an f16 cache, as llama.cpp's (half.py: half the memory and the bytes a long
        context's attention reads); a float32 one for the exact f32 mode."""
        if not self.half_attention:
            return super().new_kv(n_ctx, n_head_kv, head_dim)
        return np.zeros((n_ctx, n_head_kv, head_dim), np.float16)

    def _warm(self, rows=None) -> None:
        """Before the first op: if a helper is compiling the op kernels (warm.py), compile the products
        of the uploaded weight types here meanwhile, then wait for it. `rows`: the type whose rows the
        first op looks up (the token embedding's), for the helper to compile."""
        if self._warmed:
            return
        self._warmed = True
        from . import warm

        if warm.running():
            warm.products_for(self, getattr(self, "_qtypes", {}), () if rows is None else (rows,))
            warm.wait()

    def _threads(self) -> int:
        """Applies the backend's n_threads (if it has one) to Numba's pool; returns the count."""
        n = getattr(self, "n_threads", None)
        return pool.use(n) if n else numba.get_num_threads()

    def _parallel(self, work: int) -> bool:
        return work >= PAR_MIN and self._threads() > 1

    def rms_norm(self, x, weight, eps: float):
        self._warm()
        x = _f32c(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = np.empty_like(x2)
        has_w = weight is not None
        w = _f32c(weight) if has_w else _NO_WEIGHT
        if has_w and w.shape != (shape[-1],):
            raise ValueError(f"rms_norm weight {w.shape} does not match rows of {shape[-1]}")
        _rms_norm_ser(x2, w, has_w, np.float32(eps), y)
        return y.reshape(shape)

    def rope(self, x, positions, p: RopeParams):
        self._warm()
        x = _f32c(x)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[:, None, :]
        check_rope(x.shape, p)
        pos = np.ascontiguousarray(np.asarray(positions).reshape(-1), dtype=np.int64)
        if pos.shape[0] != x.shape[0]:
            raise ValueError(f"rope: {pos.shape[0]} positions for {x.shape[0]} tokens")
        out = np.empty_like(x)
        none = np.empty((x.shape[0], 0, x.shape[2]), np.float32)  # no k, v and cache rows: q's rotation only
        _rope_store_ser(x, none, none, pos, *_rope_consts(p), ONE, False, out, none, none, 0)
        return out[:, 0, :] if squeeze else out

    def rope_kv_store(self, cache_k, cache_v, q, k, v, positions, p: RopeParams, q_scale=None):
        """(rope(q) [* q_scale], kv_store(cache_k, rope(k)), kv_store(cache_v, v)) in one kernel call: a
        decode token's two ropes and two stores were four calls and ~10 us of Python a layer. The same
        arithmetic, so the same values (tests/test_kernels_ops_numba.py)."""
        self._warm()
        q, k, v = _f32c(q), _f32c(k), _f32c(v)
        if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
            raise ValueError(f"rope_kv_store: q, k, v must be (n_tok, n_head, head_dim), got {q.shape} {k.shape} {v.shape}")
        check_rope(q.shape, p)
        check_rope(k.shape, p)
        pos = np.ascontiguousarray(np.asarray(positions).reshape(-1), dtype=np.int64)
        n = pos.shape[0]
        if not (q.shape[0] == k.shape[0] == v.shape[0] == n):
            raise ValueError(f"rope_kv_store: {n} positions for q, k, v of {q.shape[0]}, {k.shape[0]}, {v.shape[0]} tokens")
        if k.shape[1:] != cache_k.shape[1:] or v.shape[1:] != cache_v.shape[1:]:
            raise ValueError(f"rope_kv_store: k {k.shape}, v {v.shape} do not fit the cache rows {cache_k.shape[1:]}, "
                             f"{cache_v.shape[1:]}")
        start = int(pos[0]) if n else 0
        end = start + n
        if n > 1 and not np.array_equal(pos, np.arange(start, end)):
            raise ValueError("kv_store: the CPU cache takes consecutive positions")
        if start < 0 or end > cache_k.shape[0] or end > cache_v.shape[0]:
            raise ValueError(f"kv_store: positions {start}..{end - 1} outside a cache of {cache_k.shape[0]} rows")
        qo = np.empty_like(q)
        _rope_store_ser(q, k, v, pos, *_rope_consts(p), ONE if q_scale is None else np.float32(q_scale),
                        self.half_attention, qo, writable_view(cache_k), writable_view(cache_v), start)
        return qo, cache_k[:end], cache_v[:end]

    def softmax(self, x):
        self._warm()
        x = _f32c(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = np.empty_like(x2)
        _softmax_ser(x2, y)
        return y.reshape(shape)

    @pinned
    def _act(self, kind: int, x, g=None):
        self._warm()
        x = _f32c(x)
        shape = x.shape
        xf = x.reshape(-1)
        if g is None:
            gf = xf
        else:
            gf = _f32c(g).reshape(-1)
            if gf.shape != xf.shape:
                raise ValueError(f"gate {shape} and up {np.shape(g)} differ")
        y = np.empty_like(xf)
        (_act_par if self._parallel(xf.size * 4) else _act_ser)(kind, xf, gf, y)
        return y.reshape(shape)

    def silu(self, x):
        return self._act(0, x)

    def gelu(self, x):
        return self._act(1, x)

    def swiglu(self, gate, up):
        return self._act(2, gate, up)

    def geglu(self, gate, up):
        return self._act(3, gate, up)

    def _kv_chunks(self, n_items: int, n_kv: int, parallel: bool) -> int:
        """How many pieces to split the kv range into (split-K): only when there are too few
        (token, kv head) items to keep the threads busy, in pieces of at least 256 rows."""
        nt = self._threads()
        if not parallel or n_items >= 4 * nt or n_kv < 512:
            return 1
        return max(1, min(-(-4 * nt // n_items), n_kv // 256))

    def _head_split(self, n_items: int, group: int, parallel: bool) -> int:
        """Into how many parts to split the query heads that share a kv head: only when there are fewer
        (token, kv head) items than threads (a decode token of a model with one kv head, Gemma 3's, had
        one thread working and the other waiting). Each part reads the kv head's rows again, so with
        items enough for every thread it stays one part (SmolLM2's 3 kv heads on 2 threads: 2 and 3
        parts ran 0-35% slower). A head's arithmetic is the same in any part: the same bits."""
        nt = self._threads()
        if not parallel or group == 1 or n_items >= nt:
            return 1
        return min(group, -(-nt // n_items))

    @pinned
    def attention(self, q, k, v, q_pos, *, scale: float, window: int = 0, sinks=None, kv_pos=None,
                  softcap: float = 0.0, spans=None):
        self._warm()
        q, k, v = _f32c(q), kernel_view(k), kernel_view(v)  # an f16 cache as its bits (half.py)
        check_attention(q, k, v)
        n_tok, n_head, d_k = q.shape
        n_kv, n_head_kv, d_v = v.shape
        qp = np.ascontiguousarray(np.asarray(q_pos).reshape(-1), dtype=np.int64)
        if qp.shape[0] != n_tok:
            raise ValueError(f"attention: {qp.shape[0]} query positions for {n_tok} tokens")
        if kv_pos is None:
            kp = _arange(n_kv)
        else:
            kp = np.ascontiguousarray(np.asarray(kv_pos).reshape(-1), dtype=np.int64)
            if kp.shape[0] != n_kv:
                raise ValueError(f"attention: {kp.shape[0]} kv positions for {n_kv} cache rows")
        has_sinks = sinks is not None
        sk = _f32c(sinks).reshape(n_head) if has_sinks else _NO_WEIGHT
        out = np.empty((n_tok, n_head, d_v), np.float32)
        if n_tok == 0:
            return out
        p16 = self.half_attention
        if p16:  # ggml without flash attention: f16 Q (K and V are stored in f16: round_kv)
            q = f16_rounded(q)
        if spans is None and n_tok == 1:  # a decode token: its whole cache
            lo, hi = _ZERO_1, np.array((n_kv,), np.int64)
        else:
            lo, hi = check_spans(spans, n_tok, n_kv)
        seen = int(np.sum(hi - lo)) if spans is not None else n_tok * n_kv  # the (token, kv row) pairs
        # all threads whatever the size (the kernel's items are spread over them), split-K only for big work
        parallel = self._threads() > 1 and n_head * max(seen, 1) * (d_k + d_v) >= PAR_MIN
        n_chunks = 1 if p16 or spans is not None else self._kv_chunks(n_tok * n_head_kv, n_kv, parallel)
        if n_chunks > 1:
            mbuf = np.empty((n_tok, n_head, n_chunks), np.float32)
            lbuf = np.empty((n_tok, n_head, n_chunks), np.float64)
            abuf = np.empty((n_tok, n_head, n_chunks, d_v), np.float32)
        else:  # unused (the kernel writes them only with n_chunks > 1)
            mbuf, lbuf, abuf = _NO_SPLIT
        n_split = self._head_split(n_tok * n_head_kv * n_chunks, n_head // n_head_kv, parallel)
        kernel = _attention_kernel(p16, has_sinks, bool(softcap))
        kernel(q, k, v, qp, kp, lo, hi, np.float32(scale), np.int64(window or 0), sk, n_chunks, n_split, out, mbuf, lbuf,
               abuf, np.float32(softcap or 0.0))
        if n_chunks > 1:
            _attn_combine(mbuf, lbuf, abuf, sk, has_sinks, out)
        return out


__all__ = ["NumbaOps"]
