"""llama.cpp's sampler chain in NumPy (stop strings: engine.stops; log-probabilities: engine.logprobs).

Sources: `common/sampling.cpp` (`common_sampler_init`: which samplers, in which order), `common/common.h`
(`common_params_sampling` defaults and the default order), `src/llama-sampling.cpp` (each sampler).

The chain that `Sampler.sample` runs, exactly as `common_sampler_init` builds it:

    logit-bias -> [params.samplers, default: penalties; dry; top-n-sigma; top-k; typical; top-p;
                   min-p; xtc; temperature (temp-ext)] -> dist

or, with `mirostat` 1/2: logit-bias -> temp -> mirostat(-v2). Every sampler keeps llama.cpp's
quirks: where it computes a softmax, whether it sorts the candidates, when it keeps `min_keep`
tokens, in float32 where llama.cpp uses `float`.

`temperature <= 0` is greedy the llama.cpp way: the `temp-ext` step keeps only the highest logit of
the surviving candidates (everything else -> -inf) and `dist` then picks it. With the default chain
that is the argmax after logit bias and penalties (top-k/top-p/min-p always keep the top token);
typical-p or XTC can remove the top token first, as they do in llama.cpp.

Randomness reproduces llama.cpp's own: `dist` (and XTC, mirostat) draw from `std::mt19937(seed)`
through libstdc++'s `generate_canonical`, and NumPy's `MT19937` with its legacy seeding is that very
generator. Given the same logits and seed, `sample` therefore returns the token llama.cpp returns.

The usual chain (penalties, top-k, top-p, min-p, temperature, the draw) runs as one compiled call with
the same arithmetic (kernels/numba_cpu/sample_chain.py: after a forward pass this module's NumPy calls
run cache-cold, 0.3-2.4 ms a token); the NumPy samplers here run every other chain, and are what the
compiled one is tested against (tests/test_sampler.py).
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # "random seed" in llama.cpp (seed -1 on the command line / API)

# common/common.h: common_params_sampling::samplers
DEFAULT_SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")

# common/sampling.cpp: common_sampler_types_from_names (canonical + alternative names) and _from_chars
_SAMPLER_NAMES = {
    "dry": "dry", "top_k": "top_k", "top_p": "top_p", "top_n_sigma": "top_n_sigma", "typ_p": "typ_p",
    "min_p": "min_p", "temperature": "temperature", "xtc": "xtc", "penalties": "penalties",
    "top-k": "top_k", "top-p": "top_p", "top-n-sigma": "top_n_sigma", "nucleus": "top_p",
    "typical-p": "typ_p", "typical": "typ_p", "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p",
    "temp": "temperature",
}
_SAMPLER_CHARS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma", "m": "min_p",
                  "t": "temperature", "x": "xtc", "e": "penalties"}


def parse_samplers(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`--samplers "top_k;temperature"` (names, `;`-separated or a list) or `--sampling-seq kt`
    (one letter each) -> canonical names. Unknown entries are skipped, as llama.cpp does (with a warning)."""
    if isinstance(spec, str):
        if ";" in spec or spec in _SAMPLER_NAMES:
            names = [s for s in spec.split(";") if s]
        else:
            return tuple(_SAMPLER_CHARS[c] for c in spec if c in _SAMPLER_CHARS)
    else:
        names = list(spec)
    return tuple(_SAMPLER_NAMES[n] for n in names if n in _SAMPLER_NAMES)


@dataclass
class SamplerParams:
    """`common_params_sampling` (common/common.h) with the same defaults; names follow the API."""

    temperature: float = 0.8
    top_k: int = 40               # <= 0: vocab size
    top_p: float = 0.95           # 1.0: disabled
    min_p: float = 0.05           # 0.0: disabled
    typical_p: float = 1.0        # 1.0: disabled
    repeat_penalty: float = 1.0   # 1.0: disabled
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64      # 0: disabled, -1: the whole history (llama.cpp: the context size)
    seed: int | None = None       # None / -1 / 0xFFFFFFFF: random
    logit_bias: dict[int, float] | None = None
    min_keep: int = 0             # 0: disabled; samplers keep at least this many candidates
    top_n_sigma: float = -1.0     # <= 0: disabled
    xtc_probability: float = 0.0  # 0.0: disabled
    xtc_threshold: float = 0.1    # > 0.5: disabled
    dynatemp_range: float = 0.0   # 0.0: disabled
    dynatemp_exponent: float = 1.0
    dry_multiplier: float = 0.0   # 0.0: disabled
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64  # 0: disabled, -1: context size
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", "\"", "*"])
    mirostat: int = 0             # 0: off, 1: mirostat, 2: mirostat 2.0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    samplers: Sequence[str] = DEFAULT_SAMPLERS


class _MT19937:
    """`std::mt19937(seed)` and libstdc++'s `generate_canonical` on top of it. The 32-bit outputs are
    drawn from NumPy's MT19937 256 at a time (the same sequence: one `random_raw()` a draw cost ~2 us
    a call, cold, two draws a token)."""

    _BLOCK = 256

    def __init__(self, seed: int):
        self._bg = np.random.MT19937(0)
        self._bg._legacy_seeding(int(seed) & 0xFFFFFFFF)  # init_genrand: the same as std::mt19937(seed)
        self._block: list[int] = []
        self._next = 0

    def u32(self) -> int:
        i = self._next
        if i == len(self._block):
            self._block = self._bg.random_raw(self._BLOCK).tolist()
            i = 0
        self._next = i + 1
        return self._block[i]

    def uniform_double(self) -> float:
        """`std::uniform_real_distribution<double>(0, 1)(rng)`: two 32-bit draws, low word first."""
        lo = self.u32()
        hi = self.u32()
        r = (lo + hi * 4294967296) / 18446744073709551616.0  # one rounding, as the C++ double sum
        return r if r < 1.0 else math.nextafter(1.0, 0.0)

    def uniform_float(self) -> float:
        """`std::uniform_real_distribution<float>(0, 1)(rng)`: one 32-bit draw, in float32."""
        r = np.float32(self.u32()) / np.float32(4294967296.0)
        return float(r) if r < 1.0 else float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def _resolve_seed(seed: int | None) -> int:
    """llama-sampling.cpp get_rng_seed: LLAMA_DEFAULT_SEED (and our None / -1) -> a random seed."""
    if seed is None or seed == -1 or (seed & 0xFFFFFFFF) == LLAMA_DEFAULT_SEED:
        return secrets.randbits(32)
    return int(seed) & 0xFFFFFFFF


class _Candidates:
    """`llama_token_data_array`: ids, logits, probabilities (or None), and the `sorted` flag."""

    __slots__ = ("ids", "logits", "p", "sorted")

    def __init__(self, ids: np.ndarray, logits: np.ndarray, p: np.ndarray | None = None, sorted_: bool = False):
        self.ids, self.logits, self.p, self.sorted = ids, logits, p, sorted_

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray | slice) -> None:
        self.ids = self.ids[idx]
        self.logits = self.logits[idx]
        if self.p is not None:
            self.p = self.p[idx]


def _c():
    """kernels/numba_cpu/sample_chain: float32 exp and logs as C's expf/logf/log2f, as llama.cpp's samplers
    compute them (NumPy's float32 versions differ by an ulp on 14-40% of arguments), and the compiled
    chain. Imported on first use: the Numba backend's package is not needed to import this module."""
    from kernels.numba_cpu import sample_chain

    return sample_chain


_NO_TOKENS, _NO_PENALTIES = np.zeros(0, np.int64), np.ones(3)


def _seq_sum_f32(x: np.ndarray) -> np.float32:
    """A C `float` accumulated in order (np.sum would use pairwise summation)."""
    return np.cumsum(x, dtype=np.float32)[-1] if len(x) else np.float32(0.0)


def _desc_order(logits: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices of the top `k` (all when None) logits, highest first (ties: lower position first)."""
    n = len(logits)
    if k is None or k >= n:
        return np.argsort(-logits, kind="stable")
    if k <= 0:
        return np.zeros(0, np.int64)
    # the k-th largest value by a value-only partition (half the time of argpartition on a 50-250k
    # vocabulary), then every position at or above it, ordered by (-logit, position): exactly the top k,
    # ties at the boundary going to the lower positions too
    thr = np.partition(logits, n - k)[n - k]
    idx = np.flatnonzero(logits >= thr) if not np.isnan(thr) else np.arange(n)
    return idx[np.lexsort((idx, -logits[idx]))][:k]


def _sort(c: _Candidates, k: int | None = None) -> None:
    """llama_token_data_array_partial_sort_inplace: keep the top k, sorted by logit, descending."""
    c.take(_desc_order(c.logits, k))
    c.sorted = True


def _softmax(c: _Candidates, do_sort: bool) -> None:
    """llama_sampler_softmax_impl: optional sort, then p = expf(l - max) / sum in float32."""
    if do_sort and not c.sorted:
        _sort(c)
    max_l = c.logits[0] if c.sorted else c.logits.max()
    with np.errstate(invalid="ignore", over="ignore"):
        p = _c().expf(c.logits - max_l)
    c.p = p / _seq_sum_f32(p)


# --- the samplers (llama-sampling.cpp), each mutating the candidates in place


def _bias_arrays(bias: dict[int, float] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """logit_bias as (ids, float32 values), negative ids dropped (they match no logit)."""
    if not bias:
        return None
    pairs = [(int(t), np.float32(b)) for t, b in bias.items() if int(t) >= 0]
    return np.array([t for t, _ in pairs], np.int64), np.array([b for _, b in pairs], np.float32)


def _biased(logits: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A copy of `logits` with the bias added in float32, in order: `_apply_logit_bias`'s values."""
    out = logits.copy()
    inside = ids < len(out)
    np.add.at(out, ids[inside], values[inside])  # in order, a repeated id (15 and "15") added twice as there
    return out


def _apply_logit_bias(c: _Candidates, bias: dict[int, float]) -> None:
    n = len(c)
    for tok, b in bias.items():
        tok = int(tok)
        if 0 <= tok < n and c.ids[tok] == tok:
            c.logits[tok] = np.float32(c.logits[tok] + np.float32(b))
        else:
            hit = np.nonzero(c.ids == tok)[0]
            c.logits[hit] = c.logits[hit] + np.float32(b)


def _apply_penalties(c: _Candidates, window: Sequence[int], repeat: float, freq: float, present: float) -> None:
    """llama_sampler_penalties_apply over the tokens of the penalty window."""
    if not window or (repeat == 1.0 and freq == 0.0 and present == 0.0):
        return
    counts = Counter(int(t) for t in window)
    toks = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    cnts = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    order = np.argsort(toks)
    toks, cnts = toks[order], cnts[order]
    pos = np.searchsorted(toks, c.ids)
    pos[pos >= len(toks)] = 0
    hit = np.nonzero(toks[pos] == c.ids)[0]
    if not len(hit):
        return
    count = cnts[pos[hit]].astype(np.float32)
    logit = c.logits[hit]
    r = np.float32(repeat)
    with np.errstate(divide="ignore"):  # repeat 0: a positive logit becomes +inf, as in llama.cpp's C
        logit = np.where(logit <= 0, logit * r, logit / r).astype(np.float32)
    logit = logit - (count * np.float32(freq) + np.float32(present) * (count > 0).astype(np.float32))
    c.logits[hit] = logit.astype(np.float32)
    c.sorted = False


def _apply_top_k(c: _Candidates, k: int) -> None:
    if k <= 0:
        return
    k = min(k, len(c))
    if not c.sorted:
        _sort(c, k)
    c.take(slice(0, k))


def _apply_top_p(c: _Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    _softmax(c, do_sort=False)
    n = len(c)
    if not c.sorted and n > 1024:
        # llama.cpp's heuristic: try the top 256 first, sort everything only if they do not reach p
        order = _desc_order(c.logits, 256)
        cum = np.cumsum(c.p[order], dtype=np.float32)
        ok = np.nonzero((cum >= np.float32(p)) & (np.arange(1, len(order) + 1) >= min_keep))[0]
        if len(ok):
            c.take(order[: int(ok[0]) + 1])
            c.sorted = True
            return
    if not c.sorted:
        _sort(c)
    cum = np.cumsum(c.p, dtype=np.float32)
    ok = np.nonzero((cum >= np.float32(p)) & (np.arange(1, n + 1) >= min_keep))[0]
    last = int(ok[0]) + 1 if len(ok) else n
    c.take(slice(0, last))


def _apply_min_p(c: _Candidates, p: float, min_keep: int) -> None:
    if p <= 0.0 or not len(c):
        return
    log_p = np.float32(math.log(p))
    if not c.sorted:
        min_logit = np.float32(c.logits.max() + log_p)
        keep = np.nonzero(c.logits >= min_logit)[0]
        if len(keep) and len(keep) >= min_keep:
            c.take(keep)
            return
        _sort(c)
    min_logit = np.float32(c.logits[0] + log_p)
    below = np.nonzero(c.logits[1:] < min_logit)[0] + 1
    below = below[below >= min_keep]
    i = int(below[0]) if len(below) else len(c)
    c.take(slice(0, i))


def _apply_typical(c: _Candidates, p: float, min_keep: int) -> None:
    if p >= 1.0:
        return
    _softmax(c, do_sort=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = _c().logf(c.p)
        # llama.cpp computes -p*log(p) for every candidate, which is NaN for p == 0 (a -inf logit):
        # here those contribute 0, as the entropy's definition has it
        terms = np.where(c.p > 0, -c.p * logp, np.float32(0.0)).astype(np.float32)
        entropy = _seq_sum_f32(terms)
        shifted = np.abs(-logp - entropy).astype(np.float32)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(c.p[order], dtype=np.float32)
    idx = np.arange(len(c))
    ok = np.nonzero((cum > np.float32(p)) & ((min_keep == 0) | (idx >= min_keep - 1)))[0]
    last = int(ok[0]) + 1 if len(ok) else len(c)
    c.take(order[:last])
    c.sorted = False


def _temp_impl(c: _Candidates, temp: float) -> None:
    if temp <= 0.0:
        # keep the first maximal logit, everything else -inf
        i = int(np.argmax(c.logits))
        keep = c.logits[i]
        c.logits = np.full_like(c.logits, -np.inf)
        c.logits[i] = keep
        return
    c.logits = (c.logits / np.float32(temp)).astype(np.float32)


def _apply_temp_ext(c: _Candidates, temp: float, delta: float, exponent: float) -> None:
    if delta <= 0:
        _temp_impl(c, temp)
        return
    min_temp = max(0.0, temp - delta)
    max_temp = temp + delta
    if len(c) <= 1:
        return
    max_entropy = -math.log(1.0 / len(c))
    _softmax(c, do_sort=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(c.p > 0, -c.p * _c().logf(c.p), np.float32(0.0)).astype(np.float32)
    entropy = float(_seq_sum_f32(terms))
    dyn_temp = min_temp + (max_temp - min_temp) * (entropy / max_entropy) ** exponent
    _temp_impl(c, float(np.float32(dyn_temp)))
    p = np.exp(c.logits.astype(np.float64) - float(c.logits[0]))
    c.p = (p / p.sum()).astype(np.float32)


def _apply_top_n_sigma(c: _Candidates, n: float) -> None:
    """Masks (-inf) every logit below max - n * std of the finite logits; no sort, no softmax
    (llama.cpp's current version), sums in float as there."""
    if n <= 0.0 or len(c) <= 1:
        return
    finite = c.logits[c.logits != -np.inf]
    if len(finite):
        mx = max(c.logits[0], finite.max())
        mean = np.float32(_seq_sum_f32(finite) / np.float32(len(finite)))
        d = (finite - mean).astype(np.float64)
        std = np.float32(math.sqrt(float(np.cumsum((d * d).astype(np.float32), dtype=np.float32)[-1]) / len(finite)))
    else:
        mx, std = c.logits[0], np.float32(0.0)
    thr = np.float32(mx - np.float32(n) * std)
    c.logits = np.where(c.logits < thr, np.float32(-np.inf), c.logits).astype(np.float32)


def _apply_xtc(c: _Candidates, rng: _MT19937, probability: float, threshold: float, min_keep: int) -> None:
    if probability <= 0.0 or threshold > 0.5 or len(c) < 2:
        return
    if rng.uniform_float() > probability:
        return
    _softmax(c, do_sort=True)
    above = c.p >= np.float32(threshold)
    # pos_last: the last index of the leading run of candidates at or above the threshold
    pos_last = int(np.argmin(above)) - 1 if not above.all() else len(c) - 1
    pos_last = max(pos_last, 0)
    if len(c) - pos_last >= min_keep and pos_last > 0:
        c.take(slice(pos_last, None))


def _apply_dist(c: _Candidates, rng: _MT19937, rnd: float | None = None) -> int:
    """llama_sampler_dist_apply: softmax, one uniform double (`rnd` if the caller drew it already),
    first cumulative sum >= target; the probabilities divided by the double sum, as there."""
    rnd = rng.uniform_double() if rnd is None else rnd
    if len(c) == 1:  # (llama.cpp draws once anyway: keeps the RNG aligned with backend sampling)
        c.p = np.ones(1, dtype=np.float32)
        return 0
    max_l = c.logits[0] if c.sorted else c.logits.max()
    with np.errstate(invalid="ignore", over="ignore"):
        p = _c().expf(c.logits - max_l)
    run = np.cumsum(p, dtype=np.float64)
    sum_cum = float(run[-1])
    sel = int(np.searchsorted(run, sum_cum * rnd, side="left"))
    c.p = (p.astype(np.float64) / sum_cum).astype(np.float32)
    return min(sel, len(c) - 1)


def _sample_discrete(c: _Candidates, rng: _MT19937) -> int:
    """llama_sample_dist: std::discrete_distribution over c.p (libstdc++)."""
    if len(c) < 2:
        return 0
    prob = c.p.astype(np.float64)
    cp = np.cumsum(prob / prob.sum())
    cp[-1] = 1.0
    return int(np.searchsorted(cp[:-1], rng.uniform_double(), side="left"))


class _Dry:
    """llama_sampler_dry (Koboldcpp's DRY, as ported to llama.cpp)."""

    def __init__(self, params: SamplerParams, n_ctx_train: int | None, breakers: dict[int, list[list[int]]]):
        self.multiplier = params.dry_multiplier
        self.base = params.dry_base
        self.allowed_length = params.dry_allowed_length
        self.penalty_last_n = params.dry_penalty_last_n
        self.total_context_size = n_ctx_train if n_ctx_train else 1 << 62
        self.breakers = breakers

    @property
    def enabled(self) -> bool:
        return self.multiplier != 0.0 and self.base >= 1.0 and self.penalty_last_n != 0

    def apply(self, c: _Candidates, history: Sequence[int]) -> None:
        if not self.enabled:
            return
        eff = self.total_context_size if self.penalty_last_n == -1 else max(self.penalty_last_n, 0)
        last_n = min(len(history), eff, self.total_context_size)
        if last_n <= self.allowed_length:
            return
        last = [int(t) for t in history[len(history) - last_n:]]

        def rat(i: int) -> int:
            return last[last_n - 1 - i]

        # step 1: restart sequences (sequence breakers) limit the repetition length
        rep_limit = last_n
        for i in range(last_n):
            tails = self.breakers.get(rat(i))
            if not tails:
                continue
            longest = -1
            for tail in tails:
                seq_len = len(tail)
                if longest < seq_len <= i and all(tail[o] == rat(i - o - 1) for o in range(seq_len)):
                    longest = seq_len
            if longest >= 0:
                rep_limit = i - longest
                break
        if rep_limit < self.allowed_length:
            return

        # step 2: Z-algorithm over the reversed context
        repeat = [0] * last_n
        lastk = last_n - 1
        lt = rt = 0
        for k in range(1, last_n):
            if k > rt:
                n = 0
                while n + k < last_n and rat(n) == rat(n + k):
                    n += 1
                repeat[lastk - k] = min(n, rep_limit)
                if n > 0:
                    lt, rt = k, k + n - 1
            else:
                p = k - lt
                right_len = rt - k + 1
                if repeat[lastk - p] < right_len:
                    repeat[lastk - k] = min(repeat[lastk - p], rep_limit)
                else:
                    i = rt + 1
                    while i < last_n and rat(i) == rat(i - k):
                        i += 1
                    repeat[lastk - k] = min(i - k, rep_limit)
                    lt, rt = k, i - 1

        # step 3: the longest repeat each candidate token would extend
        max_repeat: dict[int, int] = {}
        for i in range(last_n - 1):
            rl = repeat[i]
            if rl >= self.allowed_length:
                tok = rat(last_n - 2 - i)
                if max_repeat.get(tok, -1) < rl:
                    max_repeat[tok] = rl
        if not max_repeat:
            c.sorted = False
            return

        # step 4: penalties
        max_exponent = int(88.7228391 / math.log(self.base)) if self.base > 1.000001 else 0
        for tok, rl in max_repeat.items():
            if any(len(t) == 0 for t in self.breakers.get(tok, ())):
                continue  # a single-token sequence breaker is never penalised
            exp = rl - self.allowed_length
            if max_exponent > 0 and exp > max_exponent:
                exp = max_exponent
            penalty = np.float32(self.multiplier * self.base ** exp)
            hit = np.nonzero(c.ids == tok)[0]
            c.logits[hit] = c.logits[hit] - penalty
        c.sorted = False


def dry_breakers_from_vocab(breakers: Iterable[str], pieces: Sequence[str | bytes],
                            tokenize: Callable[[str], list[int]], max_tail_len: int = 20,
                            max_char_len: int = 40) -> dict[int, list[list[int]]]:
    """llama_sampler_init_dry's get_overlapping_token_sequences: for every token whose text contains
    a breaker, an empty tail; for every token whose text ends with the start of a breaker, the
    tokenization of the rest of that breaker. `pieces[id]` is the token's text (special tokens
    rendered); `tokenize` tokenizes plain text without BOS or special-token parsing."""
    out: dict[int, list[list[int]]] = {}
    as_bytes = bool(pieces) and isinstance(pieces[0], (bytes, bytearray))
    for brk in breakers:
        if not brk:
            continue
        s = brk.encode("utf-8") if as_bytes else brk
        s = s[:max_char_len]
        first = s[:1]
        for tok, word in enumerate(pieces):
            if s in word:
                seqs = out.setdefault(tok, [])
                if [] not in seqs:
                    seqs.append([])
                continue
            pos = word.find(first)
            while pos != -1:
                overlap = len(word) - pos
                if overlap < len(s) and word[pos:] == s[:overlap]:
                    rest = s[overlap:]
                    text = rest.decode("utf-8", errors="replace") if as_bytes else rest
                    tail = list(tokenize(text))[:max_tail_len]
                    seqs = out.setdefault(tok, [])
                    if tail not in seqs:
                        seqs.append(tail)
                pos = word.find(first, pos + 1)
    return out


class Sampler:
    """One request's sampler: `sample(logits, history)` picks the next token, `accept(token)` records it.

    `history` is every token so far (prompt + generated): llama-server feeds the prompt tokens to
    the sampler too, so the penalty window covers them. Without `history`, the tokens given to
    `accept` are used instead.

    DRY needs the vocabulary to turn its sequence breakers into tokens: pass `vocab` (piece texts)
    and `tokenize`, or `dry_breakers` already in token form ({head token: [tail token lists]}).

    `constraint` (engine.constrain.Constraint: a JSON schema or grammar) masks the logits before
    every other sampler, once per step, and follows the tokens given to `accept`.
    """

    def __init__(self, params: SamplerParams | None = None, *, vocab: Sequence[str | bytes] | None = None,
                 tokenize: Callable[[str], list[int]] | None = None, n_ctx_train: int | None = None,
                 dry_breakers: dict[int, list[list[int]]] | None = None, constraint=None):
        self.params = p = params or SamplerParams()
        self.constraint = constraint
        self.seed = _resolve_seed(p.seed)                   # what llama-server reports as "seed"
        self._rng = _MT19937(self.seed)                      # dist / mirostat
        random_seed = p.seed is None or p.seed == -1 or (p.seed & 0xFFFFFFFF) == LLAMA_DEFAULT_SEED
        # XTC owns a second generator: the same seed, or its own random one (llama_sampler_init_xtc)
        self._xtc_rng = _MT19937(_resolve_seed(None) if random_seed else self.seed)
        self.order = parse_samplers(p.samplers) if isinstance(p.samplers, str) else tuple(
            _SAMPLER_NAMES.get(s, s) for s in p.samplers)
        unknown = [s for s in self.order if s not in _SAMPLER_CHARS.values()]
        if unknown:
            raise ValueError(f"unknown sampler(s) {unknown}; known: {sorted(set(_SAMPLER_CHARS.values()))}")
        if p.mirostat not in (0, 1, 2):
            raise ValueError(f"mirostat must be 0, 1 or 2, not {p.mirostat}")
        if dry_breakers is None and p.dry_multiplier != 0.0 and vocab is not None and tokenize is not None:
            dry_breakers = dry_breakers_from_vocab(p.dry_sequence_breakers, vocab, tokenize)
        self._dry = _Dry(p, n_ctx_train, dry_breakers or {})
        self._mu = np.float32(2.0 * p.mirostat_tau)
        self._prev: list[int] = []
        self._keep = max(64, p.penalty_last_n, p.dry_penalty_last_n)
        # where every sampler before top_k leaves the logits as they are, the chain may start with the
        # top k taken straight from the logits (a one-pass selection, no copy of the vocabulary)
        lead = self.order.index("top_k") if "top_k" in self.order and p.top_k > 0 and p.mirostat == 0 else None
        self._lead = lead if lead is not None and all(self._inert(s) for s in self.order[:lead]) else None
        self._steps = self._compiled_steps()  # the chain as one compiled call, where it can be
        # logit_bias (ignore_eos bans the end-of-generation tokens with it) goes on a copy of the logits
        # before anything else where no constraint masks them first, so that the one-pass top-k and the
        # compiled chain take biased logits as they take plain ones (the general path adds it to all
        # the vocabulary's candidates first, in NumPy: ~0.3 ms a token on SmolLM2's 49,152)
        self._bias = _bias_arrays(p.logit_bias) if constraint is None else None
        self._bias_pairs = list(zip(self._bias[0].tolist(), self._bias[1])) if self._bias is not None else []
        self.candidates: tuple[np.ndarray, np.ndarray] | None = None  # (ids, probs) after the last sample

    def reset(self) -> None:
        self._prev.clear()
        self._mu = np.float32(2.0 * self.params.mirostat_tau)

    def accept(self, token: int) -> None:
        if self.constraint is not None:
            self.constraint.accept(token)
        self._prev.append(int(token))
        if self.params.penalty_last_n >= 0 and self.params.dry_penalty_last_n >= 0 and len(self._prev) > 2 * self._keep:
            del self._prev[: len(self._prev) - self._keep]

    def _inert(self, name: str) -> bool:
        """Whether sampler `name` never changes the candidates with these parameters."""
        p = self.params
        if name == "penalties":
            return p.penalty_last_n == 0 or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0
                                             and p.presence_penalty == 0.0)
        if name == "dry":
            return not self._dry.enabled
        if name == "top_n_sigma":
            return p.top_n_sigma <= 0.0
        return False

    def _compiled_steps(self) -> tuple | None:
        """The chain as `top_k_chain` runs it: (the kernel, step codes and values of the samplers after
        top_k, the penalties that come first), where before top_k there are only the penalties and
        samplers doing nothing with these parameters, and after it each sampler is one it knows (top-k,
        top-p, min-p, plain temperature) or does nothing (typical-p 1, XTC off, ...); None otherwise,
        and the chain runs here in NumPy. The penalties: [repeat, frequency, presence], or None."""
        p = self.params
        if "top_k" not in self.order or p.top_k <= 0 or p.mirostat != 0:
            return None
        lead = self.order.index("top_k")
        if not all(s == "penalties" or self._inert(s) for s in self.order[:lead]) or \
                self.order[:lead].count("penalties") > 1:
            return None
        sc = _c()
        penalize = not self._inert("penalties") and "penalties" in self.order[:lead]
        codes, values = [], []
        for name in self.order[lead + 1:]:
            if name == "top_k":
                codes.append(sc.TOP_K), values.append(float(p.top_k))
            elif name == "top_p":
                if p.top_p < 1.0:
                    codes.append(sc.TOP_P), values.append(float(p.top_p))
            elif name == "min_p":
                if p.min_p > 0.0:
                    codes.append(sc.MIN_P), values.append(math.log(p.min_p))  # as _apply_min_p's log_p
            elif name == "temperature":
                if p.dynatemp_range > 0:
                    return None
                codes.append(sc.TEMPERATURE), values.append(float(p.temperature))
            elif name == "typ_p":
                if p.typical_p < 1.0:
                    return None
            elif name == "xtc":
                if p.xtc_probability > 0.0 and p.xtc_threshold <= 0.5:
                    return None
            elif not self._inert(name):
                return None
        penalties = np.array([p.repeat_penalty, p.frequency_penalty, p.presence_penalty]) if penalize else None
        return sc.top_k_chain, np.array(codes, np.int64), np.array(values, np.float64), penalties

    def _compiled_chain(self, logits: np.ndarray, hist: Sequence[int]) -> tuple[int, float]:
        """The whole chain in one compiled call (kernels/numba_cpu/sample_chain.py): (token, -1.0), or
        (-1, the uniform drawn) where it leaves the logits to the NumPy path (a NaN...), which then
        uses that draw rather than drawing again."""
        run, codes, values, penalties = self._steps
        pp = self.params
        k = min(pp.top_k, len(logits))
        ids, p = np.empty(k, np.int64), np.empty(k, np.float32)
        window = _NO_TOKENS
        if penalties is not None and hist:
            n = pp.penalty_last_n
            window = np.array(hist[-n:] if n > 0 else hist, np.int64)
        else:
            penalties = _NO_PENALTIES
        rnd = self._rng.uniform_double()
        n, sel = run(logits, k, codes, values, pp.min_keep, rnd, ids, p, window, penalties)
        if n < 0:
            return -1, rnd
        self.candidates = (ids[:n], p[:n])
        return int(ids[sel]), -1.0

    def _top_k_first(self, logits: np.ndarray) -> _Candidates | None:
        """The candidates after top_k when nothing before it acts (see __init__): the same ids, logits
        and order as the general path, from one pass over the logits."""
        if self._lead is None or self.constraint is not None:
            return None
        from kernels.numba_cpu.select import top_k_desc

        idx = top_k_desc(logits, min(self.params.top_k, len(logits)))
        return None if idx is None else _Candidates(idx, logits[idx], sorted_=True)

    _BIAS_LOOP_MAX = 32  # biases of more entries than this go on a copy of the logits (NumPy)

    def sample(self, logits: np.ndarray, history: Sequence[int] | None = None) -> int:
        hist = self._prev if history is None else history
        logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
        if self._bias is None:
            return self._sample(logits, hist)
        if not logits.flags.writeable:
            return self._sample(_biased(logits, *self._bias), hist)
        # the bias goes on the logits themselves for the call and comes off again after: the few biased
        # entries saved and written back, rather than a copy of the vocabulary a token (~25 us on
        # SmolLM2's 49,152; ignore_eos, which every benchmark's stream sets, is a bias). The caller
        # reads the same logits afterwards (logprobs are of the model's own logits, as in llama.cpp)
        n = len(logits)
        pairs = [(i, v) for i, v in self._bias_pairs if i < n]
        if len(pairs) > self._BIAS_LOOP_MAX:
            return self._sample(_biased(logits, *self._bias), hist)
        saved = [(i, logits[i]) for i, _ in pairs]  # all before any add: a repeated id restores its original
        for i, v in pairs:  # float32 + float32, in order: `_biased`'s np.add.at, without its ~30 us a call cold
            logits[i] = logits[i] + v
        try:
            return self._sample(logits, hist)
        finally:
            for i, x in saved:
                logits[i] = x

    def _sample(self, logits: np.ndarray, hist: Sequence[int]) -> int:
        p = self.params
        rnd = None
        if self._steps is not None and self.constraint is None and len(logits):
            tok, drawn = self._compiled_chain(logits, hist)
            if tok >= 0:
                return tok
            rnd = drawn
        c = self._top_k_first(logits) if len(logits) else None
        if c is not None:
            for name in self.order[self._lead + 1:]:
                self._apply(name, c, hist)
            sel = _apply_dist(c, self._rng, rnd)
            self.candidates = (c.ids, c.p)
            return int(c.ids[sel])
        c = _Candidates(np.arange(len(logits), dtype=np.int64), logits.copy())
        if self.constraint is not None:
            self.constraint.mask(c.logits)
        if p.logit_bias and self._bias is None:
            _apply_logit_bias(c, p.logit_bias)
        if p.mirostat == 0:
            for name in self.order:
                self._apply(name, c, hist)
            sel = _apply_dist(c, self._rng, rnd)
        else:
            _temp_impl(c, p.temperature)
            sel = self._mirostat(c, len(logits))
        self.candidates = (c.ids, c.p)
        return int(c.ids[sel])

    def _apply(self, name: str, c: _Candidates, hist: Sequence[int]) -> None:
        p = self.params
        if name == "penalties":
            n = p.penalty_last_n
            if n != 0:
                _apply_penalties(c, hist[-n:] if n > 0 else hist, p.repeat_penalty, p.frequency_penalty,
                                 p.presence_penalty)
        elif name == "dry":
            self._dry.apply(c, hist)
        elif name == "top_n_sigma":
            _apply_top_n_sigma(c, p.top_n_sigma)
        elif name == "top_k":
            _apply_top_k(c, p.top_k)
        elif name == "typ_p":
            _apply_typical(c, p.typical_p, p.min_keep)
        elif name == "top_p":
            _apply_top_p(c, p.top_p, p.min_keep)
        elif name == "min_p":
            _apply_min_p(c, p.min_p, p.min_keep)
        elif name == "xtc":
            _apply_xtc(c, self._xtc_rng, p.xtc_probability, p.xtc_threshold, p.min_keep)
        elif name == "temperature":
            _apply_temp_ext(c, p.temperature, p.dynatemp_range, p.dynatemp_exponent)

    def _mirostat(self, c: _Candidates, n_vocab: int) -> int:
        """llama_sampler_mirostat(_v2)_apply, in float as there (logf/powf/log2f)."""
        p = self.params
        f = np.float32
        tau, eta = f(p.mirostat_tau), f(p.mirostat_eta)
        _softmax(c, do_sort=True)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if p.mirostat == 1:
                n = min(100 - 1, len(c) - 1)
                i = np.arange(n, dtype=np.float32)
                t = _c().logf((i + f(2)) / (i + f(1)))
                b = _c().logf(c.p[:n] / c.p[1:n + 1])
                sum_ti_bi = _seq_sum_f32((t * b).astype(np.float32))
                sum_ti_sq = _seq_sum_f32((t * t).astype(np.float32))
                s_hat = f(sum_ti_bi / sum_ti_sq)
                eps = f(s_hat - f(1))
                k = np.power(f(eps * np.power(f(2), self._mu)) / f(f(1) - np.power(f(n_vocab), -eps)), f(f(1) / s_hat))
                # int(k) of a NaN, an inf or a float past INT_MAX is INT_MIN on x86 (cvttss2si), so
                # llama.cpp's std::max(int(k), 1) keeps one candidate there
                _apply_top_k(c, max(int(k), 1) if np.isfinite(k) and abs(k) < 2.0 ** 31 else 1)
            else:
                surprise = -_c().log2f(c.p)
                over = np.nonzero(surprise > self._mu)[0]
                c.take(slice(0, max(int(over[0]) if len(over) else len(c), 1)))
            _softmax(c, do_sort=True)
            idx = _sample_discrete(c, self._rng)
            e = f(-_c().log2f(c.p[idx:idx + 1])[0] - tau)
            self._mu = f(self._mu - f(eta * e))
        return idx
