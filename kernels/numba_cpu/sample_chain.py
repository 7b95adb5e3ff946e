"""The sampler chain's usual path in one compiled call, and float32 exp and logs as C's expf, logf, log2f.

A decode step's sampling runs between two forward passes, serial time of every token. A forward pass
reads the weights through the caches and leaves the sampler's code and data cold: measured on the
2-vCPU Xeon after a SmolLM2 step, the Python chain (a top-k selection, then top-p, min-p, temperature
and the draw, each a few NumPy calls) took 0.32-0.40 ms a token against 0.05 ms when run in a loop,
3-4% of the token. Here the chain most requests use runs as one call: `top_k_chain` takes the logits,
selects the top k (select.top_k_into), applies the steps that follow it in the chain's order and
draws, with every number computed as engine/sampler.py computes it -- the same candidates,
probabilities and token (tests/test_sampler.py compares the two paths).

Steps it knows (the samplers after top_k whose arithmetic on sorted candidates is short): top-k again,
top-p, min-p and plain temperature; before top_k, the repetition penalties (repeat, frequency, presence:
Ollama's default repeat_penalty 1.1), applied to a copy of the logits. A chain with anything else, a
NaN in the logits or a -inf best logit takes the NumPy path.

expf, logf, log2f: NumPy's float32 exp and logs are vectorized approximations that differ from C's by an
ulp on many arguments (exp ~40% over [-30, 0], log ~22% and log2 ~14% over (0, 1]); Numba's float32
functions call the C library's, as llama.cpp's samplers do (expf in llama_sampler_softmax_impl and the
draw, logf in typical-p and dynamic temperature, log2f in mirostat), so probabilities here match
llama.cpp's bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .select import top_k_into

TOP_K, TOP_P, MIN_P, TEMPERATURE = 0, 1, 2, 3   # step codes of `top_k_chain`
EXP, LOG, LOG2 = 0, 1, 2                          # functions of `c_math_into`


@njit(cache=True, nogil=True, error_model="numpy")
def c_math_into(x, out, fn):
    """out[i] = expf / logf / log2f (fn) of x[i], float32, the C library's."""
    for i in range(x.shape[0]):
        if fn == EXP:
            out[i] = np.exp(x[i])
        elif fn == LOG:
            out[i] = np.log(x[i])
        else:
            out[i] = np.log2(x[i])


def _c_math(x, fn: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    flat = np.ascontiguousarray(x.reshape(-1))
    out = np.empty_like(flat)
    c_math_into(flat, out, fn)
    return out.reshape(x.shape)


def expf(x) -> np.ndarray:
    """float32 exp of each element, rounded as C's expf (see the module's docstring)."""
    return _c_math(x, EXP)


def logf(x) -> np.ndarray:
    """float32 natural log, as C's logf (NumPy's float32 log differs on ~22% of arguments in (0, 1])."""
    return _c_math(x, LOG)


def log2f(x) -> np.ndarray:
    """float32 base-2 log, as C's log2f (NumPy's differs on ~14% of arguments in (0, 1])."""
    return _c_math(x, LOG2)


@njit(inline="always", error_model="numpy")
def _softmax_sorted(lg, n, p):
    """llama_sampler_softmax_impl on candidates sorted by logit: p = expf(l - l[0]) / their float sum."""
    m = lg[0]
    s = np.float32(0.0)
    for i in range(n):
        p[i] = np.exp(lg[i] - m)
        s += p[i]
    for i in range(n):
        p[i] = p[i] / s


@njit(cache=True, nogil=True, error_model="numpy")
def _penalized(logits, window, penalties):
    """_apply_penalties: a copy of the logits with each token of the window (int64, any order) penalized
    once, by its count: divided by (positive) or multiplied by (not) the repeat penalty, then less
    count * frequency + presence, in float as llama_sampler_penalties_apply."""
    x = logits.copy()
    r, fq, pr = np.float32(penalties[0]), np.float32(penalties[1]), np.float32(penalties[2])
    w = np.sort(window)
    i = 0
    while i < w.shape[0]:
        j = i
        while j < w.shape[0] and w[j] == w[i]:
            j += 1
        t = w[i]
        if 0 <= t < x.shape[0]:
            v = x[t]
            v = v * r if v <= 0 else v / r
            x[t] = v - (np.float32(j - i) * fq + pr)
        i = j
    return x


@njit(cache=True, nogil=True, error_model="numpy")
def top_k_chain(logits, k, codes, values, min_keep, rnd, ids, p, window, penalties):
    """The top k of `logits` (float32), then steps codes[i] with values[i] in order, then the draw;
    with a non-empty `window` (the penalty window's tokens), the penalties [repeat, frequency,
    presence] first.

    ids (int64) and p (float32) of length k receive the candidates left and their probabilities (as
    the chain's `candidates`). Returns (count, selected index), or (-1, -1) where the Python path must
    run (a NaN logit, a best logit of -inf). Values: top-k its k, top-p its p, min-p log(p) (a double,
    rounded to float here as in _apply_min_p), temperature the temperature. rnd: the draw's uniform
    double, taken by the caller from the chain's generator."""
    if window.shape[0] > 0:
        logits = _penalized(logits, window, penalties)
    n = top_k_into(logits, k, ids)
    if n < 0:
        return -1, -1
    lg = np.empty(n, np.float32)
    for i in range(n):
        lg[i] = logits[ids[i]]
    if n > 0 and lg[0] == -np.inf:
        return -1, -1
    for s in range(codes.shape[0]):
        code, v = codes[s], values[s]
        if code == TOP_K:                      # _apply_top_k on sorted candidates
            if v > 0 and v < n:
                n = int(v)
        elif code == TOP_P:                    # _apply_top_p, sorted: the first prefix whose float sum reaches p
            if v < 1.0:
                _softmax_sorted(lg, n, p)
                cum = np.float32(0.0)
                pv = np.float32(v)
                for i in range(n):
                    cum += p[i]
                    if cum >= pv and i + 1 >= min_keep:
                        n = i + 1
                        break
        elif code == MIN_P:                    # _apply_min_p, sorted: cut at the first logit below l[0] + log p
            if n > 0:
                lim = np.float32(lg[0] + np.float32(v))
                for i in range(1, n):
                    if lg[i] < lim and i >= min_keep:
                        n = i
                        break
        else:                                  # TEMPERATURE: _temp_impl
            if v <= 0.0:
                for i in range(1, n):          # the first maximal logit is the first of sorted candidates
                    lg[i] = -np.inf
            else:
                t = np.float32(v)
                for i in range(n):
                    lg[i] = lg[i] / t
    # _apply_dist: expf(l - max) in float, summed in double; the first running sum reaching sum * rnd
    if n == 1:
        p[0] = np.float32(1.0)
        return 1, 0
    m = lg[0]
    total = 0.0
    for i in range(n):
        p[i] = np.exp(lg[i] - m)
        total += np.float64(p[i])
    target = total * rnd
    run = 0.0
    sel = n
    for i in range(n):
        run += np.float64(p[i])
        if run >= target:
            sel = i
            break
    for i in range(n):
        p[i] = np.float32(np.float64(p[i]) / total)
    return n, min(sel, n - 1)
