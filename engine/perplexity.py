"""Perplexity and KL-divergence as llama.cpp's `llama-perplexity` computes them (tools/perplexity).

Perplexity (its default method): the text is tokenized once, with BOS if the model adds one, and cut
into `n_chunk = len(tokens) // n_ctx` chunks of `n_ctx` tokens (at least two are needed). Each chunk is
evaluated from an empty cache, its first token replaced by BOS (if the model adds one); only the
second half is scored, so every scored token has at least n_ctx/2 tokens of context: the logits at
positions first = n_ctx/2 ... n_ctx-2 give the negative log-likelihood of the token that follows.
PPL = exp(mean NLL), printed as a running estimate after each chunk; its uncertainty is
PPL * sqrt(var(NLL) / (count - 1)).

KL-divergence (how quantization is judged): `--kl-divergence-base FILE` with a text saves, while it
measures the base model's perplexity, the tokens and every scored position's log-probabilities in
llama.cpp's own file format (so files are interchangeable with llama-perplexity's): "_logits_", u32
n_ctx, i32 n_vocab, i32 n_chunk, i32 tokens[n_chunk * n_ctx], then per scored position
2*((n_vocab+1)//2) + 4 uint16: a float32 scale and minimum log-probability, and each log-probability
quantized to 16 bits over [max - 16, max]. Adding `--kl-divergence` reads such a file instead of a
text, evaluates the same chunks with another model and reports its PPL beside the base's, the mean KL
divergence KL(base || model) with percentiles, the change of the correct token's probability (Δp) and
how often both models agree on the most likely token.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np

MAGIC = b"_logits_"


class PerplexityError(ValueError):
    """Input that perplexity cannot be measured on (too few tokens, a foreign base file, ...)."""


@dataclass
class Perplexity:
    ppl: float
    ppl_error: float                 # the ± of llama.cpp's "Final estimate"
    n_chunks: int
    n_ctx: int
    count: int                       # tokens scored
    running: list[float] = field(default_factory=list)   # the estimate after each chunk ([1]..., [2]...)


def mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama.cpp's: the mean, and the standard error of the mean (0 for fewer than 11 values)."""
    if count < 1:
        return 0.0, 0.0
    f = total / count
    df = total2 / count - f * f
    return f, (float(np.sqrt(df / (count - 1))) if df > 0 and count > 10 else 0.0)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of log-probabilities (float64 sums over float32 exponentials, as llama.cpp)."""
    m = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(axis=-1, keepdims=True, dtype=np.float64))
    return (logits - m) - lse


def chunk_logits(eng, tokens: list[int], n_ctx: int, n_chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(chunk index, logits of the scored positions, the tokens they predict) for each chunk."""
    first = n_ctx // 2
    bos = eng.tokenizer.bos_id if eng.tokenizer.add_bos else None
    for i in range(n_chunk):
        ids = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        targets = np.asarray(ids[first + 1:], dtype=np.int64)
        if bos is not None:
            ids[0] = bos
        logits = eng.logits(ids)[first:n_ctx - 1]
        yield i, np.asarray(logits, dtype=np.float32), targets


def count_chunks(n_tokens: int, n_ctx: int, n_chunks: int | None) -> int:
    if n_ctx < 4:
        raise PerplexityError(f"a context of {n_ctx} tokens is too small to score half of it")
    if n_tokens < 2 * n_ctx:
        raise PerplexityError(f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of "
                              f"{n_ctx}; the text tokenizes to only {n_tokens} tokens")
    most = n_tokens // n_ctx
    return most if n_chunks is None or n_chunks < 0 else min(n_chunks, most)


def perplexity(eng, tokens: list[int], n_ctx: int, n_chunks: int | None = None, save: BinaryIO | None = None,
               on_chunk: Callable[[int, float], None] | None = None) -> Perplexity:
    """llama-perplexity's measurement on `tokens` (already tokenized with BOS). With `save`, writes the
    KL-divergence base file as it goes."""
    n_chunk = count_chunks(len(tokens), n_ctx, n_chunks)
    n_vocab = eng.n_vocab
    nv = 2 * ((n_vocab + 1) // 2) + 4
    if save is not None:
        save.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunk))
        save.write(np.asarray(tokens[:n_chunk * n_ctx], dtype=np.int32).tobytes())
    nll = nll2 = 0.0
    count = 0
    running = []
    for i, logits, targets in chunk_logits(eng, tokens, n_ctx, n_chunk):
        lp = log_softmax(logits)
        v = -lp[np.arange(len(targets)), targets]
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += len(v)
        running.append(float(np.exp(nll / count)))
        if save is not None:
            save.write(quantize_log_probs(logits, nv).tobytes())
        if on_chunk:
            on_chunk(i, running[-1])
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = float(np.exp(mean))
    err = ppl * float(np.sqrt(var / (count - 1))) if var > 0 else 0.0
    return Perplexity(ppl, err, n_chunk, n_ctx, count, running)


def quantize_log_probs(logits: np.ndarray, nv: int) -> np.ndarray:
    """llama.cpp's 16-bit log-probability records: per row a float32 scale and minimum log-probability
    (in the first 4 uint16), then round((logit - min_logit) / scale) over [max - 16, max], 0 below."""
    logits = np.asarray(logits, dtype=np.float32)
    n_rows, n_vocab = logits.shape
    max_logit = logits.max(axis=1)
    min_logit = np.maximum(logits.min(axis=1), max_logit - 16).astype(np.float32)
    lse = np.log(np.exp(logits - max_logit[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
    min_log_prob = (min_logit - max_logit - lse).astype(np.float32)
    scale = ((max_logit - min_logit) / np.float32(65535)).astype(np.float32)
    out = np.zeros((n_rows, nv), dtype=np.uint16)
    head = np.stack([scale, min_log_prob], axis=1).astype("<f4")
    out[:, :4] = head.view(np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
        q = np.rint(inv[:, None] * (logits - min_logit[:, None]))
    q = np.where(logits > min_logit[:, None], q, 0)
    out[:, 4:4 + n_vocab] = np.clip(q, 0, 65535).astype(np.uint16)
    return out


# --- KL-divergence against a saved base -------------------------------------------------------------

@dataclass
class BaseLogits:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray
    path: str
    offset: int                      # where the log-probability records start

    @classmethod
    def read(cls, path) -> "BaseLogits":
        with open(path, "rb") as f:
            head = f.read(8 + 12)
            if len(head) < 20 or head[:8] != MAGIC:
                raise PerplexityError(f"{path} does not look like a file of log-probabilities (no {MAGIC!r} header)")
            n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", head[8:])
            tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype=np.int32)
        if len(tokens) != n_ctx * n_chunk or n_ctx < 4 or n_chunk < 1:
            raise PerplexityError(f"{path}: truncated (expected {n_ctx * n_chunk} tokens)")
        base = cls(n_ctx, n_vocab, n_chunk, tokens, str(path), 20 + 4 * n_ctx * n_chunk)
        import os

        need = base.offset + n_chunk * (n_ctx - 1 - n_ctx // 2) * base.nv * 2
        if os.path.getsize(path) < need:
            raise PerplexityError(f"{path}: truncated ({os.path.getsize(path)} bytes, {need} expected)")
        return base

    @property
    def nv(self) -> int:
        return 2 * ((self.n_vocab + 1) // 2) + 4

    def chunk(self, i: int) -> np.ndarray:
        n = self.n_ctx - 1 - self.n_ctx // 2
        return np.fromfile(self.path, dtype=np.uint16, count=n * self.nv,
                           offset=self.offset + i * n * self.nv * 2).reshape(n, self.nv)


@dataclass
class KLDivergence:
    count: int = 0
    n_chunks: int = 0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    kld_values: list = field(default_factory=list)
    p_diff_values: list = field(default_factory=list)

    def add(self, logits: np.ndarray, base: np.ndarray, targets: np.ndarray):
        """One chunk's scored rows: this model's logits, the base's 16-bit records, the tokens."""
        n_vocab = logits.shape[1]
        rows = np.arange(len(targets))
        head = np.ascontiguousarray(base[:, :4]).view("<f4")
        scale, min_log_prob = head[:, 0].astype(np.float32), head[:, 1].astype(np.float32)
        p_log_base = scale[:, None] * base[:, 4:4 + n_vocab].astype(np.float32) + min_log_prob[:, None]
        lp = log_softmax(np.asarray(logits, dtype=np.float32))
        nll = -lp[rows, targets]
        nll_base = -p_log_base[rows, targets].astype(np.float64)
        keep = p_log_base > -16.0
        kld = np.where(keep, np.exp(p_log_base) * (p_log_base - lp), 0.0).sum(axis=1, dtype=np.float64)
        p_diff = np.exp(-nll) - np.exp(-nll_base)
        self.count += len(targets)
        self.n_chunks += 1
        self.sum_nll += float(nll.sum())
        self.sum_nll2 += float((nll * nll).sum())
        self.sum_nll_base += float(nll_base.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).sum())
        self.sum_nll_nll_base += float((nll * nll_base).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_p_diff += float(p_diff.sum())
        self.sum_p_diff2 += float((p_diff ** 2).sum())
        self.sum_p_diff4 += float((p_diff ** 4).sum())
        self.n_same_top += int((logits.argmax(axis=1) == p_log_base.argmax(axis=1)).sum())
        self.kld_values.extend(kld.tolist())
        self.p_diff_values.extend(p_diff.tolist())

    # the statistics llama.cpp prints
    @property
    def ppl(self) -> tuple[float, float]:
        m, e = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        return float(np.exp(m)), float(np.exp(m)) * e

    @property
    def ppl_base(self) -> tuple[float, float]:
        m, e = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        return float(np.exp(m)), float(np.exp(m)) * e

    def _cov(self) -> float:
        if self.count < 10:
            return 0.0
        c = self.count
        return (self.sum_nll_nll_base / c - (self.sum_nll / c) * (self.sum_nll_base / c)) / (c - 1)

    @property
    def log_ppl_ratio(self) -> tuple[float, float]:
        a, ea = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        b, eb = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        return a - b, float(np.sqrt(max(ea * ea + eb * eb - 2 * self._cov(), 0.0)))

    @property
    def kld(self) -> tuple[float, float]:
        return mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)

    @property
    def same_top(self) -> tuple[float, float]:
        p = self.n_same_top / self.count
        return p, float(np.sqrt(p * (1 - p) / (self.count - 1))) if self.count > 1 else 0.0

    @property
    def p_diff_rms(self) -> tuple[float, float]:
        m, e = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = float(np.sqrt(m))
        return rms, (0.5 / rms * e if rms > 0 else 0.0)

    def percentile(self, values: str, fraction: float) -> float:
        v = np.sort(np.asarray(getattr(self, values)))
        p = fraction * (len(v) - 1)
        i = int(p)
        return float((1 - (p - i)) * v[i] + (p - i) * v[min(i + 1, len(v) - 1)])


def kl_divergence(eng, base: BaseLogits, n_chunks: int | None = None,
                  on_chunk: Callable[[int, KLDivergence], None] | None = None) -> KLDivergence:
    if base.n_vocab != eng.n_vocab:
        raise PerplexityError(f"{base.path} was computed with a vocabulary of {base.n_vocab} tokens, this model has "
                              f"{eng.n_vocab}: the two models must share their tokenizer")
    n_chunk = base.n_chunk if n_chunks is None or n_chunks < 0 else min(n_chunks, base.n_chunk)
    result = KLDivergence()
    for i, logits, targets in chunk_logits(eng, base.tokens.tolist(), base.n_ctx, n_chunk):
        result.add(logits, base.chunk(i), targets)
        if on_chunk:
            on_chunk(i, result)
    return result
