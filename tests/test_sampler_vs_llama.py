"""DRY, XTC, top-n-sigma, mirostat v1/v2 and dynamic temperature against llama.cpp's own samplers.

llama.cpp's sampler chain API (through llama_cpp's ctypes bindings) runs on the same logits with the
same seed as engine.sampler.Sampler; both draw with std::mt19937, so the drawn token ids must be
the same over 200 draws (the history growing with each draw, for DRY and mirostat's state).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from engine.sampler import Sampler, SamplerParams

N_DRAWS = 200
SEED = 4242


class LlamaChain:
    """A llama.cpp sampler chain applied to a logits vector: `draw(logits)` -> token id."""

    def __init__(self, llama_cpp, samplers):
        self.l = llama_cpp
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for s in samplers:
            llama_cpp.llama_sampler_chain_add(self.chain, s)

    def accept(self, token: int) -> None:
        self.l.llama_sampler_accept(self.chain, int(token))

    def draw(self, logits: np.ndarray) -> int:
        l = self.l
        n = len(logits)
        data = (l.llama_token_data * n)()
        for i, x in enumerate(logits.tolist()):
            data[i].id, data[i].logit, data[i].p = i, x, 0.0
        arr = l.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
        l.llama_sampler_apply(self.chain, ctypes.byref(arr))
        tok = arr.data[arr.selected].id  # samplers may move `data` (XTC drops the head)
        self.accept(tok)
        return tok

    def free(self):
        self.l.llama_sampler_free(self.chain)


def _logit_stream(n_vocab=512, scale=3.0):
    rng = np.random.default_rng(7)
    for _ in range(N_DRAWS):
        yield (rng.standard_normal(n_vocab) * scale).astype(np.float32)


def _compare(llama_cpp, make_llama, params: SamplerParams, history=None, sampler_kw=None, n_vocab=512):
    ref = LlamaChain(llama_cpp, make_llama())
    ours = Sampler(params, **(sampler_kw or {}))
    hist = list(history or [])
    for t in hist:
        ref.accept(t)
    got, want = [], []
    try:
        for logits in _logit_stream(n_vocab):
            w = ref.draw(logits)
            g = ours.sample(logits, hist)
            ours.accept(g)
            hist.append(w)  # follow llama.cpp's choice so one mismatch does not cascade
            got.append(g)
            want.append(w)
    finally:
        ref.free()
    mism = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not mism, f"{len(mism)} of {N_DRAWS} draws differ, first at {mism[0]}: ours {got[mism[0]]}, llama.cpp {want[mism[0]]}"
    assert len(set(want)) > 5  # the draws are really random


def only(**kw) -> SamplerParams:
    base = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temperature=1.0, seed=SEED)
    base.update(kw)
    return SamplerParams(**base)


@pytest.mark.parametrize("probability,threshold,min_keep", [(0.5, 0.1, 0), (1.0, 0.05, 0), (0.8, 0.02, 3)])
def test_xtc_matches_llama_cpp(llama_cpp, probability, threshold, min_keep):
    l = llama_cpp
    _compare(l, lambda: [l.llama_sampler_init_xtc(probability, threshold, min_keep, SEED), l.llama_sampler_init_dist(SEED)],
             only(samplers=("xtc",), xtc_probability=probability, xtc_threshold=threshold, min_keep=min_keep),
             n_vocab=64)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
def test_top_n_sigma_matches_llama_cpp(llama_cpp, n):
    l = llama_cpp
    _compare(l, lambda: [l.llama_sampler_init_top_n_sigma(n), l.llama_sampler_init_dist(SEED)],
             only(samplers=("top_n_sigma",), top_n_sigma=n))


@pytest.mark.parametrize("temp,delta,exponent", [(0.8, 0.5, 1.0), (1.0, 0.7, 2.0)])
def test_dynamic_temperature_matches_llama_cpp(llama_cpp, temp, delta, exponent):
    l = llama_cpp
    _compare(l, lambda: [l.llama_sampler_init_temp_ext(temp, delta, exponent), l.llama_sampler_init_dist(SEED)],
             only(samplers=("temperature",), temperature=temp, dynatemp_range=delta, dynatemp_exponent=exponent))


@pytest.mark.parametrize("tau,eta,temp", [(5.0, 0.1, 1.0), (3.0, 0.2, 0.8)])
def test_mirostat_v1_matches_llama_cpp(llama_cpp, tau, eta, temp):
    l = llama_cpp
    n_vocab = 512
    _compare(l, lambda: [l.llama_sampler_init_temp(temp), l.llama_sampler_init_mirostat(n_vocab, SEED, tau, eta, 100)],
             only(mirostat=1, mirostat_tau=tau, mirostat_eta=eta, temperature=temp), n_vocab=n_vocab)


@pytest.mark.parametrize("tau,eta,temp", [(5.0, 0.1, 1.0), (3.0, 0.2, 0.8)])
def test_mirostat_v2_matches_llama_cpp(llama_cpp, tau, eta, temp):
    l = llama_cpp
    _compare(l, lambda: [l.llama_sampler_init_temp(temp), l.llama_sampler_init_mirostat_v2(SEED, tau, eta)],
             only(mirostat=2, mirostat_tau=tau, mirostat_eta=eta, temperature=temp))


@pytest.fixture(scope="module")
def smollm2_vocab(llama_cpp, smollm2_path):
    """llama.cpp's vocabulary of SmolLM2 (vocab only) and our tokenizer of the same file."""
    from engine.tokenizer import Tokenizer

    l = llama_cpp
    params = l.llama_model_default_params()
    params.vocab_only = True
    model = l.llama_model_load_from_file(str(smollm2_path).encode(), params)
    assert model
    yield l.llama_model_get_vocab(model), Tokenizer.from_gguf(smollm2_path)
    l.llama_model_free(model)


@pytest.mark.parametrize("multiplier,base,allowed,last_n", [(0.8, 1.75, 2, 64), (2.0, 2.0, 1, 40)])
def test_dry_matches_llama_cpp(llama_cpp, smollm2_vocab, multiplier, base, allowed, last_n):
    """DRY on a history full of repeats, with llama.cpp's default sequence breakers turned into
    SmolLM2's tokens on both sides."""
    from engine.sampler import dry_breakers_from_vocab

    l = llama_cpp
    vocab, tok = smollm2_vocab
    breakers = ["\n", ":", "\"", "*"]
    arr = (ctypes.c_char_p * len(breakers))(*[b.encode() for b in breakers])
    pieces = [tok.token_to_piece(i, special=True) for i in range(tok.n_vocab)]
    dry = dry_breakers_from_vocab(breakers, pieces, lambda s: tok.tokenize(s, add_bos=False))
    # the first 512 ids of the vocabulary, history: a phrase repeated with variations
    rng = np.random.default_rng(3)
    phrase = rng.integers(0, 512, 12).tolist()
    colon = tok.tokenize(":", add_bos=False)[0]
    history = phrase + [colon] + phrase[:8] + rng.integers(0, 512, 5).tolist() + phrase[:10]

    def make():
        return [l.llama_sampler_init_dry(vocab, multiplier, base, allowed, last_n, arr, len(breakers)),
                l.llama_sampler_init_dist(SEED)]

    params = only(samplers=("dry",), dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed,
                  dry_penalty_last_n=last_n)
    _compare(l, make, params, history=history, sampler_kw={"dry_breakers": dry},
             n_vocab=512)


def test_dry_changes_the_draws():
    """The comparison above is not vacuous: DRY really moves the distribution on that history."""
    from engine.sampler import _Candidates


    hist = [5, 6, 7, 8, 5, 6, 7]
    s = Sampler(only(samplers=("dry",), dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2,
                     dry_penalty_last_n=-1), dry_breakers={}, n_ctx_train=4096)
    c = _Candidates(np.arange(16), np.zeros(16, np.float32))
    s._dry.apply(c, hist)
    assert c.logits[8] < 0 and (np.delete(c.logits, 8) == 0).all()


def _draw_with_candidates(l, chain, logits: np.ndarray):
    """llama.cpp's chain on `logits`: (token, ids left, their probabilities)."""
    n = len(logits)
    rec = np.zeros(n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    rec["id"], rec["logit"] = np.arange(n), logits
    data = (l.llama_token_data * n).from_buffer(rec)
    arr = l.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    l.llama_sampler_apply(chain, ctypes.byref(arr))
    left = np.ctypeslib.as_array(ctypes.cast(arr.data, ctypes.POINTER(ctypes.c_uint8)), (arr.size * 12,))
    left = left.view(rec.dtype)
    tok = int(left["id"][arr.selected])
    l.llama_sampler_accept(chain, tok)
    return tok, left["id"].astype(np.int64), left["p"].copy()


@pytest.mark.parametrize("kw", [dict(), dict(top_k=100, top_p=0.8, min_p=0.02, temperature=1.3, min_keep=3),
                                dict(top_k=40, top_p=0.5, min_p=0.1, temperature=0.0),
                                dict(top_k=64, top_p=1.0, min_p=0.0),
                                dict(repeat_penalty=1.3, frequency_penalty=0.3, presence_penalty=0.2, penalty_last_n=16),
                                dict(repeat_penalty=0.0, penalty_last_n=16)])  # positive logits / 0: +inf
@pytest.mark.parametrize("compiled", [True, False])
def test_the_usual_chain_gives_llama_cpps_candidates_and_probabilities(llama_cpp, kw, compiled):
    """(penalties,) top-k, top-p, min-p, temperature and the draw (the defaults most requests use) on a 49k
    vocabulary:
    the same token, the same candidates left and their probabilities bit for bit, through the compiled
    chain (kernels/numba_cpu/sample_chain.py) and through the NumPy one. Both compute exp as C's expf
    and divide the probabilities by the draw's double sum, as llama.cpp does."""
    l = llama_cpp
    p = SamplerParams(**{**dict(top_k=40, top_p=0.95, min_p=0.05, temperature=0.8, seed=SEED), **kw})
    chain = l.llama_sampler_chain_init(l.llama_sampler_chain_default_params())
    for s in (l.llama_sampler_init_penalties(49_152, p.penalty_last_n, p.repeat_penalty, p.frequency_penalty,
                                             p.presence_penalty),  # (this llama.cpp's signature: n_vocab first)
              l.llama_sampler_init_top_k(p.top_k), l.llama_sampler_init_top_p(p.top_p, p.min_keep),
              l.llama_sampler_init_min_p(p.min_p, p.min_keep), l.llama_sampler_init_temp(p.temperature),
              l.llama_sampler_init_dist(SEED)):
        l.llama_sampler_chain_add(chain, s)
    ours = Sampler(p)
    assert ours._steps is not None
    if not compiled:
        ours._steps = None
    rng = np.random.default_rng(3)
    try:
        base = rng.standard_normal(49_152).astype(np.float32)  # the same favourites each draw: penalties bite
        for i in range(40):
            logits = ((base + 0.3 * rng.standard_normal(49_152)) * (2.0 + i % 4)).astype(np.float32)
            want, ids, probs = _draw_with_candidates(l, chain, logits)
            got = ours.sample(logits)
            ours.accept(got)
            assert got == want, i
            np.testing.assert_array_equal(ours.candidates[0], ids)
            assert ours.candidates[1].view(np.uint32).tolist() == probs.view(np.uint32).tolist(), i
    finally:
        l.llama_sampler_free(chain)


@pytest.mark.parametrize("chain", ["typical", "top_k_typical"])
def test_typical_leaves_llama_cpps_candidates(llama_cpp, chain):
    """Typical-p orders the candidates by |-logf(p) - entropy|, with C's logf (sample_chain.logf; NumPy's
    float32 log differs on ~22% of arguments): over a 49k vocabulary, the same token, candidates and
    probabilities bit for bit as llama.cpp's chain (in id order: llama.cpp orders equal scores by an
    unstable sort). (Dynamic temperature draws llama.cpp's tokens, test_dynamic_temperature_matches_llama_cpp,
    but its probabilities can differ by a few ulps: not pinned.)"""
    l = llama_cpp
    kw, make = {
        "typical": (dict(typical_p=0.9, min_keep=1, samplers=("typ_p",)),
                    lambda: [l.llama_sampler_init_typical(0.9, 1)]),
        "top_k_typical": (dict(top_k=200, typical_p=0.7, samplers=("top_k", "typ_p")),
                          lambda: [l.llama_sampler_init_top_k(200), l.llama_sampler_init_typical(0.7, 0)]),
    }[chain]
    ref = l.llama_sampler_chain_init(l.llama_sampler_chain_default_params())
    for s in make() + [l.llama_sampler_init_dist(SEED)]:
        l.llama_sampler_chain_add(ref, s)
    ours = Sampler(only(**kw))
    rng = np.random.default_rng(5)
    try:
        for i in range(20):
            logits = (rng.standard_normal(49_152) * (1.0 + i % 3)).astype(np.float32)
            want, ids, probs = _draw_with_candidates(l, ref, logits)
            got = ours.sample(logits)
            ours.accept(got)
            assert got == want, i
            # equal scores are ordered by std::sort there (not stable), by position here: compared by id
            mine, theirs = np.argsort(ours.candidates[0]), np.argsort(ids)
            np.testing.assert_array_equal(ours.candidates[0][mine], ids[theirs])
            assert ours.candidates[1][mine].view(np.uint32).tolist() == probs[theirs].view(np.uint32).tolist(), i
    finally:
        l.llama_sampler_free(ref)
