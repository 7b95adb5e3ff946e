"""engine/sampler.py against hand-computed examples of llama.cpp's samplers (src/llama-sampling.cpp)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.sampler import (
    DEFAULT_SAMPLERS,
    Sampler,
    SamplerParams,
    _apply_dist,
    _apply_min_p,
    _apply_penalties,
    _apply_temp_ext,
    _apply_top_k,
    _apply_top_n_sigma,
    _apply_top_p,
    _apply_typical,
    _apply_xtc,
    _Candidates,
    _MT19937,
    dry_breakers_from_vocab,
    parse_samplers,
)

PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]


def cands(logits) -> _Candidates:
    logits = np.asarray(logits, dtype=np.float32)
    return _Candidates(np.arange(len(logits), dtype=np.int64), logits.copy())


def from_probs(probs) -> _Candidates:
    return cands(np.log(np.asarray(probs, dtype=np.float64)))


def only(**kw) -> SamplerParams:
    """Params with every filter off unless given."""
    base = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temperature=1.0, seed=1234)
    base.update(kw)
    return SamplerParams(**base)


# --- defaults and chain description


def test_defaults_match_common_params_sampling():
    p = SamplerParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (p.repeat_penalty, p.presence_penalty, p.frequency_penalty, p.penalty_last_n) == (1.0, 0.0, 0.0, 64)
    assert p.seed is None and p.logit_bias is None and p.min_keep == 0
    assert tuple(p.samplers) == DEFAULT_SAMPLERS == (
        "penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")


def test_parse_samplers_names_and_chars():
    assert parse_samplers("edskypmxt") == DEFAULT_SAMPLERS
    assert parse_samplers("top_k;temperature") == ("top_k", "temperature")
    assert parse_samplers(["top-p", "nucleus", "typical", "temp", "bogus"]) == (
        "top_p", "top_p", "typ_p", "temperature")
    with pytest.raises(ValueError, match="unknown sampler"):
        Sampler(SamplerParams(samplers=("top_k", "bogus")))


# --- each filter on small hand-computed examples


def test_top_k_keeps_k_highest_sorted():
    c = cands([1, 3, 2, 0.5, -1])
    _apply_top_k(c, 2)
    assert c.ids.tolist() == [1, 2] and c.sorted
    c = cands([1, 3, 2])
    _apply_top_k(c, 0)  # <= 0: no-op
    assert c.ids.tolist() == [0, 1, 2] and not c.sorted
    c = cands([1, 3, 2])
    _apply_top_k(c, 10)  # k clamped to the size, everything sorted
    assert c.ids.tolist() == [1, 2, 0]


@pytest.mark.parametrize("p,kept", [(0.6, 2), (0.8, 3), (0.9, 4), (0.96, 5), (0.3, 1)])
def test_top_p_smallest_set_reaching_p(p, kept):
    # shuffled, so the sampler has to sort: probs 0.15 0.5 0.05 0.2 0.1 for ids 0..4
    c = from_probs([0.15, 0.5, 0.05, 0.2, 0.1])
    _apply_top_p(c, p, min_keep=0)
    assert c.ids.tolist() == [1, 3, 0, 4, 2][:kept]
    assert c.sorted


def test_top_p_min_keep_and_disabled():
    c = from_probs(PROBS)
    _apply_top_p(c, 0.1, min_keep=3)
    assert c.ids.tolist() == [0, 1, 2]
    c = from_probs(PROBS)
    _apply_top_p(c, 1.0, min_keep=0)
    assert len(c) == 5 and c.p is None  # p >= 1: returns before the softmax


def test_min_p_relative_to_max_prob_keeps_order_when_unsorted():
    # probs 0.15 0.5 0.05 0.2 0.1; min_p 0.25 -> keep p >= 0.125: ids 0, 1, 3 in their original order
    c = from_probs([0.15, 0.5, 0.05, 0.2, 0.1])
    _apply_min_p(c, 0.25, min_keep=0)
    assert c.ids.tolist() == [0, 1, 3] and not c.sorted
    # not enough survivors for min_keep -> llama.cpp's sorted fallback keeps min_keep, sorted
    c = from_probs([0.15, 0.5, 0.05, 0.2, 0.1])
    _apply_min_p(c, 0.25, min_keep=4)
    assert c.ids.tolist() == [1, 3, 0, 4] and c.sorted
    c = from_probs(PROBS)
    _apply_min_p(c, 0.0, min_keep=0)
    assert len(c) == 5


def test_typical_p_by_distance_to_entropy():
    # H = 1.3331 nats; |-ln p - H| = .640 .276 .564 .970 1.663 -> order ids 1, 2, 0, 3, 4
    # cumulative 0.2 0.35 0.85 0.95 1.0; keep until the sum exceeds p
    c = from_probs(PROBS)
    _apply_typical(c, 0.3, min_keep=0)
    assert c.ids.tolist() == [1, 2] and not c.sorted  # the most probable token is not typical
    c = from_probs(PROBS)
    _apply_typical(c, 0.5, min_keep=0)
    assert c.ids.tolist() == [1, 2, 0]
    c = from_probs(PROBS)
    _apply_typical(c, 0.1, min_keep=3)
    assert c.ids.tolist() == [1, 2, 0]


def test_temperature_scales_and_zero_keeps_only_the_max():
    c = cands([1.0, 2.0, -4.0])
    _apply_temp_ext(c, 0.5, 0.0, 1.0)
    assert c.logits.tolist() == [2.0, 4.0, -8.0]
    c = cands([1.0, 2.0, 2.0, -4.0])
    _apply_temp_ext(c, 0.0, 0.0, 1.0)
    assert c.logits.tolist() == [-np.inf, 2.0, -np.inf, -np.inf]  # the first maximum wins


def test_dynamic_temperature_from_entropy():
    # p = [0.75, 0.25]: H = 0.5623, max H = ln 2, normalized 0.8113; temp 1 +- 0.5 -> 0.5 + 1.0 * 0.8113
    c = cands([math.log(3.0), 0.0])
    _apply_temp_ext(c, 1.0, 0.5, 1.0)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    t = 0.5 + 1.0 * h / math.log(2)
    assert c.logits.tolist() == pytest.approx([math.log(3.0) / t, 0.0], rel=1e-5)
    assert c.p.sum() == pytest.approx(1.0)


def test_top_n_sigma_masks_below_max_minus_n_std():
    # mean 1.2, std sqrt(3.76) = 1.939 -> threshold 4 - 1.939 = 2.061: only 4 and 3 survive
    c = cands([4, 3, 0, 0, -1])
    _apply_top_n_sigma(c, 1.0)
    finite = c.ids[np.isfinite(c.logits)].tolist()
    assert finite == [0, 1] and len(c) == 5  # masked to -inf, not removed
    assert c.p is None and not c.sorted  # no softmax, no sort: llama.cpp's current top-n-sigma
    c = cands([4, 3, 0])
    _apply_top_n_sigma(c, -1.0)
    assert np.isfinite(c.logits).all()


def test_xtc_removes_all_but_the_least_likely_top_choice():
    probs = [0.4, 0.3, 0.2, 0.06, 0.04]
    c = from_probs(probs)
    _apply_xtc(c, _MT19937(1), 1.0, 0.1, 0)
    assert c.ids.tolist() == [2, 3, 4]
    for prob, thr in [(0.0, 0.1), (1.0, 0.6)]:  # disabled
        c = from_probs(probs)
        _apply_xtc(c, _MT19937(1), prob, thr, 0)
        assert len(c) == 5
    c = from_probs(probs)
    _apply_xtc(c, _MT19937(1), 1.0, 0.1, 4)  # would leave 3 < min_keep
    assert len(c) == 5


def test_penalties_repeat_frequency_presence():
    c = cands([2.0, -1.0, 0.5, 3.0])
    _apply_penalties(c, [0, 1, 0], repeat=2.0, freq=0.5, present=0.25)
    # token 0 (count 2): 2/2 - (2*0.5 + 0.25); token 1 (count 1): -1*2 - (0.5 + 0.25)
    assert c.logits.tolist() == [-0.25, -2.75, 0.5, 3.0]
    c = cands([2.0, -1.0, 0.5, 3.0])
    _apply_penalties(c, [0, 1, 0], repeat=1.0, freq=0.0, present=0.0)
    assert c.logits.tolist() == [2.0, -1.0, 0.5, 3.0]


def test_penalty_window_is_the_last_n_tokens_of_history():
    logits = np.array([2.0, 1.9, -5.0], dtype=np.float32)
    hist = [0, 0]
    assert Sampler(only(temperature=0, repeat_penalty=1.1)).sample(logits, hist) == 1  # 2/1.1 < 1.9
    assert Sampler(only(temperature=0, repeat_penalty=1.1, penalty_last_n=0)).sample(logits, hist) == 0
    # the window holds only the last token, which is 2 -> token 0 is not penalised
    assert Sampler(only(temperature=0, repeat_penalty=1.1, penalty_last_n=1)).sample(logits, [0, 2]) == 0
    assert Sampler(only(temperature=0, repeat_penalty=1.1, penalty_last_n=-1)).sample(logits, [0] + [2] * 100) == 1
    # without history, the accepted tokens are the window
    s = Sampler(only(temperature=0, repeat_penalty=1.1))
    assert s.sample(logits) == 0
    s.accept(0)
    assert s.sample(logits) == 1


def test_dry_penalises_the_token_that_extends_a_repeat():
    hist = [1, 2, 3, 4, 1, 2, 3]
    params = only(temperature=0, dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2, dry_penalty_last_n=-1)
    s = Sampler(params, dry_breakers={})
    c = cands(np.zeros(6))
    s._dry.apply(c, hist)
    # "1 2 3" repeats; 4 followed it -> penalty 1 * 2^(3 - 2) on token 4 only
    assert c.logits.tolist() == [0, 0, 0, 0, -2.0, 0]
    # 3 is a single-token sequence breaker: the repeat is cut off, nothing is penalised
    s = Sampler(params, dry_breakers={3: [[]]})
    c = cands(np.zeros(6))
    s._dry.apply(c, hist)
    assert c.logits.tolist() == [0] * 6
    # and through the chain: greedy would pick 4, DRY turns it down
    logits = np.array([0, 0, 0, 0, 1.0, 0.5], dtype=np.float32)
    assert Sampler(params, dry_breakers={}).sample(logits, hist) == 5


def test_dry_breakers_from_vocab():
    pieces = ["a", "b\n", ":", "x*y", "za", "c"]
    out = dry_breakers_from_vocab(["\n", ":", "*", "ab"], pieces, tokenize=lambda s: [100 + ord(ch) for ch in s])
    assert out[1] == [[]] and out[2] == [[]] and out[3] == [[]]
    # "a" and "za" end with the start of "ab": the rest "b" is tokenized as the tail
    assert out[0] == [[100 + ord("b")]] and out[4] == [[100 + ord("b")]]
    assert 5 not in out


def test_logit_bias_and_bans():
    logits = np.array([1.0, 5.0, 4.0, 0.0], dtype=np.float32)
    assert Sampler(only(temperature=0)).sample(logits, []) == 1
    assert Sampler(only(temperature=0, logit_bias={1: -math.inf})).sample(logits, []) == 2
    assert Sampler(only(temperature=0, logit_bias={3: 10.0})).sample(logits, []) == 3
    # everything but token 0 banned: sampling at any temperature can only return 0
    s = Sampler(only(temperature=1.5, logit_bias={1: -math.inf, 2: -math.inf, 3: -math.inf}))
    assert {s.sample(logits, []) for _ in range(50)} == {0}
    # the bias is applied before the penalties (and everything else)
    # (bias first: (1 + 5) / 2 = 3 < 5; penalty first would give 1 / 2 + 5 = 5.5 > 5)
    s = Sampler(only(temperature=0, logit_bias={0: 5.0}, repeat_penalty=2.0))
    assert s.sample(logits, [0]) == 1
    assert s.sample(logits, [0, 1]) == 2  # 3, 2.5, 4 -> token 2


def test_greedy_is_the_argmax_after_bias_and_penalties():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    best = int(np.argmax(logits))
    for seed in (1, 2, 3):
        for temp in (0.0, -1.0):
            s = Sampler(SamplerParams(temperature=temp, seed=seed))  # default top-k/top-p/min-p stay on
            assert [s.sample(logits, []) for _ in range(5)] == [best] * 5
    s = Sampler(SamplerParams(temperature=0.0, repeat_penalty=1e6))
    second = int(np.argsort(-logits)[1])
    assert s.sample(logits, [best]) == second  # the max logit is positive: divided by 1e6


def test_chain_order_penalties_before_top_k():
    # penalised token 0 drops below token 1 before top-k 1 looks: always token 1
    logits = np.array([3.0, 2.9, 0.0], dtype=np.float32)
    s = Sampler(only(top_k=1, repeat_penalty=2.0))
    assert {s.sample(logits, [0]) for _ in range(20)} == {1}


def test_chain_order_min_p_before_temperature():
    logits = np.log(np.array(PROBS))
    s = Sampler(SamplerParams(top_k=0, top_p=1.0, min_p=0.35, temperature=0.1, seed=3))
    s.sample(logits, [])
    # min_p ran on the untempered distribution: 0.5 and 0.2 (>= 0.175) survive, whatever the temperature
    assert sorted(s.candidates[0].tolist()) == [0, 1]
    # temperature first (a custom order) sharpens the distribution, so min_p keeps only token 0
    s = Sampler(SamplerParams(top_k=0, top_p=1.0, min_p=0.35, temperature=0.1, seed=3,
                              samplers=("temperature", "min_p")))
    s.sample(logits, [])
    assert s.candidates[0].tolist() == [0]


def test_candidates_hold_the_post_sampling_distribution():
    logits = np.log(np.array(PROBS))
    s = Sampler(SamplerParams(top_k=3, top_p=1.0, min_p=0.0, temperature=1.0, seed=0))
    s.sample(logits, [])
    ids, p = s.candidates
    assert ids.tolist() == [0, 1, 2]
    assert p.tolist() == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85], rel=1e-6)


# --- randomness


def test_same_seed_same_tokens():
    rng = np.random.default_rng(1)
    steps = [rng.normal(size=500).astype(np.float32) * 2 for _ in range(50)]
    runs = []
    for seed in (42, 42, 43):
        s = Sampler(SamplerParams(seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
        runs.append([s.sample(l, []) for l in steps])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    s1, s2 = Sampler(SamplerParams(seed=None)), Sampler(SamplerParams(seed=-1))
    assert 0 <= s1.seed < 2**32 and 0 <= s2.seed < 2**32
    assert Sampler(SamplerParams(seed=7)).seed == 7


def test_rng_is_llama_cpps_mt19937():
    # libstdc++: std::mt19937(1234) -> uniform_real_distribution<double>(0, 1), and float draws after
    # (values printed by a 20-line C++ program compiled with g++ 12)
    m = _MT19937(1234)
    assert [m.uniform_double() for _ in range(3)] == [0.49766366630595166, 0.8178384428895332, 0.6121118935844228]
    assert [round(m.uniform_float(), 9) for _ in range(3)] == [0.785358608, 0.771359921, 0.779975832]
    # llama_sampler_dist_apply's loop, in C++, with std::mt19937(7) over these logits: 1 1 3 1 1 1 1 1 0 1
    m = _MT19937(7)
    picks = [_apply_dist(cands([1, 3, 2, 0.5, -1]), m) for _ in range(10)]
    assert picks == [1, 1, 3, 1, 1, 1, 1, 1, 0, 1]
    # its 32-bit draws come from NumPy's generator in blocks: the same sequence as one draw at a time
    m, one = _MT19937(99), np.random.MT19937(0)
    one._legacy_seeding(99)
    assert [m.u32() for _ in range(3 * _MT19937._BLOCK + 5)] == [int(one.random_raw()) for _ in range(3 * 256 + 5)]


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_draws_follow_the_filtered_distribution():
    logits = np.array([2.0, 1.5, 1.0, 0.2, -1.0, -3.0], dtype=np.float32)
    n = 20000
    # top-k 3 at temperature 0.7: softmax(logits[:3] / 0.7); the others never appear
    s = Sampler(SamplerParams(top_k=3, top_p=1.0, min_p=0.0, temperature=0.7, seed=2024))
    counts = np.bincount([s.sample(logits, []) for _ in range(n)], minlength=6)
    assert counts[3:].sum() == 0
    z = np.exp(logits[:3] / 0.7)
    # chi-square, 2 degrees of freedom: 13.8 is the 0.1% critical value (the seed is fixed: no flakes)
    assert _chi2(counts[:3], z / z.sum()) < 13.8
    # the default chain: top-k 40, top-p 0.95, min-p 0.05 (drops p < 0.05 * p_max), temperature 0.8
    s = Sampler(SamplerParams(seed=99))
    counts = np.bincount([s.sample(logits, []) for _ in range(n)], minlength=6)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    keep = p >= 0.05 * p.max()  # tokens 0..3; top-p 0.95 keeps them all (cum 0.952 at token 3)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert counts[~keep].sum() == 0
    q = np.exp(logits[keep] / 0.8)
    assert _chi2(counts[keep], q / q.sum()) < 16.3  # 3 dof, 0.1%


def test_mirostat_runs_and_is_seeded():
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=200) * 3).astype(np.float32)
    for version in (1, 2):
        a = Sampler(SamplerParams(mirostat=version, seed=11))
        b = Sampler(SamplerParams(mirostat=version, seed=11))
        ta = [a.sample(logits, []) for _ in range(20)]
        assert ta == [b.sample(logits, []) for _ in range(20)]
        assert all(0 <= t < 200 for t in ta)
    with pytest.raises(ValueError):
        Sampler(SamplerParams(mirostat=3))


def test_top_p_on_a_large_vocabulary_takes_the_top_256_shortcut_correctly():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=5000) * 4).astype(np.float32)
    c = cands(logits)
    _apply_top_p(c, 0.9, min_keep=0)
    # reference: the probabilities in id order (as llama.cpp computes them), then the sorted prefix
    p = np.exp(logits - logits.max(), dtype=np.float32)
    p = p / np.cumsum(p, dtype=np.float32)[-1]
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(p[order], dtype=np.float32)
    n = int(np.nonzero(cum >= np.float32(0.9))[0][0]) + 1
    assert n < 256 and c.ids.tolist() == order[:n].tolist() and c.sorted


@pytest.mark.parametrize("kind", ["gauss", "ties", "masked", "nan", "small", "big", "allinf"])
def test_top_k_first_paths_are_the_general_path(kind):
    """When nothing before top_k acts, the chain starts from a one-pass top-k selection on the logits
    (no copy of the vocabulary), and where the rest is top-k, top-p, min-p and temperature it runs as
    one compiled call (kernels/numba_cpu/sample_chain.py): the same candidates, probabilities, draws
    and generator state as the general path, ties at the cut going to the lower ids, -inf entries kept
    in id order, NaNs and an all -inf vocabulary left to the NumPy path (with the draw already taken).
    The repetition penalties before top_k run in the compiled call too, on a copy of the logits, and so
    does a logit_bias (ignore_eos's bans): added to the logits for the call and taken off again after,
    the caller's logits left bit for bit as they were (a copy where they are read-only)."""
    r = np.random.default_rng(11)
    n = {"small": 20, "big": 49_152}.get(kind, 5000)
    for trial in range(8 if kind == "big" else 20):
        x = (r.standard_normal(n) * 3).astype(np.float32)
        if kind == "ties":
            x = np.round(x).astype(np.float32)            # hundreds of equal values around the cut
        elif kind == "masked":
            x[r.random(n) < 0.995] = -np.inf               # fewer finite values than top_k
        elif kind == "nan":
            x[r.integers(0, n, 3)] = np.nan
        elif kind == "allinf":
            x[:] = -np.inf
        best = int(np.argmax(np.nan_to_num(x, nan=-np.inf)))  # banned; one pushed up (twice: 15 and "15"); ids outside
        up = int(r.integers(0, n))
        bias = {best: -math.inf, up: 2.5, str(up): 0.75, int(r.integers(0, n)): -1.25, n + 3: 9.0, -2: 9.0}
        many = {**bias, **{int(i): float(v) for i, v in zip(r.integers(0, n, 40), r.standard_normal(40))}}  # a copy
        for params in (SamplerParams(seed=trial), SamplerParams(seed=trial, top_k=300, top_p=1.0, min_p=0.0),
                       SamplerParams(seed=trial, top_k=n + 5, temperature=1.5),
                       SamplerParams(seed=trial, top_k=60, top_p=0.7, min_p=0.2, min_keep=5, temperature=0.0),
                       SamplerParams(seed=trial, top_k=50, samplers="kmptk", top_p=0.9, min_p=0.01, temperature=0.6),
                       SamplerParams(seed=trial, top_k=50, samplers="ktpm", top_p=0.6, temperature=2.0, min_keep=2),
                       SamplerParams(seed=trial, repeat_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2),
                       SamplerParams(seed=trial, repeat_penalty=0.7, penalty_last_n=-1, top_k=8, min_p=0.0),
                       SamplerParams(seed=trial, logit_bias=bias), SamplerParams(seed=trial, logit_bias=many),
                       SamplerParams(seed=trial, logit_bias=bias, repeat_penalty=1.2, top_k=20, temperature=1.3)):
            compiled, numpy_first, general, frozen = Sampler(params), Sampler(params), Sampler(params), Sampler(params)
            before, read_only = x.tobytes(), x.copy()
            read_only.flags.writeable = False
            assert compiled._steps is not None and (compiled._lead is not None or params.repeat_penalty != 1.0)
            numpy_first._steps = None
            general._lead = general._steps = general._bias = None  # the bias added candidate by candidate
            top = [int(i) for i in np.argsort(-np.nan_to_num(x, nan=-np.inf), kind="stable")[:6]]
            hist = [top[0], 3, top[1], top[0], n + 7, top[2], top[0], 5, top[3]] * 9  # repeats, one id past the vocab
            for _ in range(3):
                a, b, c = compiled.sample(x, hist), numpy_first.sample(x, hist), general.sample(x, hist)
                assert a == b == c == frozen.sample(read_only, hist)
                assert x.tobytes() == before
                for s in (numpy_first, general, frozen):
                    np.testing.assert_array_equal(compiled.candidates[0], s.candidates[0])
                    assert compiled.candidates[1].view(np.uint32).tolist() == s.candidates[1].view(np.uint32).tolist()
            assert compiled._rng.u32() == general._rng.u32()
    # a sampler before top_k that acts (repeat penalty) takes the general path; after it, one the
    # compiled chain does not know (active typical-p, XTC, dynamic temperature) takes the NumPy one
    assert Sampler(SamplerParams(repeat_penalty=1.1))._lead is None
    for p in (SamplerParams(typical_p=0.9), SamplerParams(xtc_probability=0.5), SamplerParams(dynatemp_range=0.5),
              SamplerParams(repeat_penalty=1.1, samplers="kem"),
              SamplerParams(repeat_penalty=1.1, samplers="eekt"), SamplerParams(dry_multiplier=0.8)):
        assert Sampler(p, vocab=["a", "b"], tokenize=lambda s: [0])._steps is None, p
    assert Sampler(SamplerParams(typical_p=1.0, xtc_probability=0.0))._steps is not None


@pytest.mark.parametrize("name", ["expf", "logf", "log2f"])
def test_c_float_functions_are_the_c_librarys(name):
    """sample_chain.expf/logf/log2f against libm's over uniform arguments ([-30, 0] for exp, (0, 1] for
    the logs; NumPy's float32 versions differ from libm's on 14-40% of them), a sweep of float32 bit
    patterns (every 397,603rd of the negatives down to -104, of (0, 1]) and the edges."""
    import ctypes

    from kernels.numba_cpu import sample_chain

    libm = ctypes.CDLL("libm.so.6")
    ref = getattr(libm, name)
    ref.restype, ref.argtypes = ctypes.c_float, [ctypes.c_float]
    rng = np.random.default_rng(0)
    if name == "expf":
        uniform = rng.uniform(-30, 0, 3000)
        x = np.arange(np.float32(-0.0).view(np.uint32), np.float32(-104).view(np.uint32), 97 * 4099,
                      dtype=np.uint32).view(np.float32)
        edges = [0.0, -np.inf, np.nan, 88.7, 89.0, -87.3, -103.9]
    else:
        uniform = rng.uniform(1e-8, 1, 3000)
        x = np.arange(1, np.float32(1.0).view(np.uint32), 97 * 4099, dtype=np.uint32).view(np.float32)
        edges = [0.0, 1.0, np.inf, np.nan, -1.0, 1e-45, 3.0]
    x = np.concatenate([uniform.astype(np.float32), x, np.array(edges, np.float32)])
    want = np.array([ref(float(v)) for v in x], np.float32)
    got = getattr(sample_chain, name)(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    with np.errstate(all="ignore"):
        numpy = {"expf": np.exp, "logf": np.log, "log2f": np.log2}[name](x[:3000])
    assert (numpy != want[:3000]).mean() > 0.05  # what it replaces (moot if NumPy matched)


@pytest.mark.parametrize("n", [49_152, 49_153, 151_936, 262_144])
def test_top_k_of_a_big_vocabulary_is_the_one_pass_selection(n):
    """A vocabulary of more than 4k groups of logits is first narrowed to the groups whose maximum
    reaches the k-th largest group maximum (kernels/numba_cpu/select.py): the same k positions in the
    same order as offering every logit, whatever the values -- ties across the cut, all equal, the
    best in the short tail, mostly -inf, +inf -- and None for a NaN in a group or in the tail."""
    from kernels.numba_cpu import select

    r = np.random.default_rng(n)

    def one_pass(x, k):
        out = np.empty(k, np.int64)
        c = select._top_k(x, k, out)
        return None if c < 0 else out[:c]

    for kind in ("gauss", "ties", "equal", "tail", "masked", "inf"):
        x = (r.standard_normal(n) * 3).astype(np.float32)
        if kind == "ties":
            x = np.round(x).astype(np.float32)
        elif kind == "equal":
            x[:] = 1.5
        elif kind == "tail":
            x[-max(n % select.GROUP, 1):] += 30.0
        elif kind == "masked":
            x[r.random(n) < 0.999] = -np.inf
        elif kind == "inf":
            x[r.integers(0, n, 5)] = np.inf
        for k in (1, 40, 100):
            got = select.top_k_desc(x, k)
            np.testing.assert_array_equal(got, one_pass(x, k))
    for where in (7, n - 1):
        x = (r.standard_normal(n) * 3).astype(np.float32)
        x[where] = np.nan
        assert select.top_k_desc(x, 40) is None
