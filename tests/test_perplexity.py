"""`perplexity` against llama.cpp: the same method computed on llama.cpp's own logits (llama-cpp-python,
logits_all) gives the same PPL within 1% on SmolLM2 and Gemma 3, and KL-divergence of a re-quantized
SmolLM2 against its F16 is positive and agrees with the KLD of llama.cpp's own logits.

The text, tests/data/perplexity_ja.txt, is a copy of the project's seed document
shared/seeds/003_17e5fdf7235d0cbe.txt (a Japanese guide to running gpt-oss with llama.cpp on Metal;
about 3,800 SmolLM2 tokens), kept here so that CI does not depend on shared/.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.perplexity import MAGIC, PerplexityError, count_chunks

TEXT = Path(__file__).parent / "data" / "perplexity_ja.txt"
N_CTX = 128
N_CHUNKS = 4


def llama_cpp_method(llama_cpp, path, n_ctx: int, n_chunks: int, want_logits: bool = False):
    """llama-perplexity's method on llama.cpp's logits: chunks of n_ctx from an empty cache, BOS first,
    the second half scored. Returns (PPL, tokens[, scored logits per chunk])."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=2, logits_all=True,
                          verbose=False)
    tokens = llm.tokenize(TEXT.read_text().encode(), add_bos=True, special=False)
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    first, nll, count, kept = n_ctx // 2, 0.0, 0, []
    for i in range(min(n_chunks, len(tokens) // n_ctx)):
        ids = tokens[i * n_ctx:(i + 1) * n_ctx]
        targets = np.array(ids[first + 1:])
        if add_bos:
            ids = [llm.token_bos()] + ids[1:]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[first:n_ctx - 1], dtype=np.float64)
        lp = logits - logits.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        nll -= lp[np.arange(len(targets)), targets].sum()
        count += len(targets)
        if want_logits:
            kept.append(logits.astype(np.float32))
    del llm
    return (float(np.exp(nll / count)), tokens) + ((kept,) if want_logits else ())


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["perplexity", "-t", "2", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def final_ppl(out: str) -> float:
    m = re.search(r"^Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)$", out, re.M)
    assert m, out
    return float(m.group(1))


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_perplexity_matches_llama_cpp(which, smollm2_path, gemma3_path, llama_cpp, capsys):
    path = smollm2_path if which == "smollm2" else gemma3_path
    rc, out, err = run(capsys, "-m", path, "-f", TEXT, "-c", N_CTX, "--chunks", N_CHUNKS)
    assert rc == 0, err
    ours = final_ppl(out)
    running = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", out)]
    assert len(running) == N_CHUNKS and running[-1] == pytest.approx(ours, abs=1e-4)
    theirs, tokens = llama_cpp_method(llama_cpp, path, N_CTX, N_CHUNKS)
    assert f"{len(tokens)} tokens" in err  # the same tokenization
    print(f"{which}: PPL {ours:.4f}, llama.cpp's logits {theirs:.4f} ({100 * (ours / theirs - 1):+.2f}%)")
    assert abs(ours / theirs - 1) < 0.01, (ours, theirs)


def test_kl_divergence_of_a_requantized_smollm2_against_f16(smollm2_path, llama_cpp, tmp_path, capsys):
    def quantize(ftype: int, out: Path) -> Path:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
        assert llama_cpp.llama_model_quantize(str(smollm2_path).encode(), str(out).encode(), params) == 0
        return out

    f16, q4_0 = quantize(1, tmp_path / "smollm2-f16.gguf"), quantize(2, tmp_path / "smollm2-q4_0.gguf")
    base = tmp_path / "f16.kld"
    n_chunks = 2
    rc, out, err = run(capsys, "-m", f16, "-f", TEXT, "-c", N_CTX, "--chunks", n_chunks, "--kl-divergence-base", base)
    assert rc == 0, err
    ppl_f16 = final_ppl(out)
    # llama.cpp's file layout: header, the tokens, one 16-bit record per scored position
    raw = base.read_bytes()
    n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", raw[8:20])
    assert raw[:8] == MAGIC and (n_ctx, n_chunk) == (N_CTX, n_chunks)
    record = (2 * ((n_vocab + 1) // 2) + 4) * 2  # bytes per scored position
    assert len(raw) == 20 + 4 * n_ctx * n_chunk + n_chunk * (n_ctx - 1 - n_ctx // 2) * record

    def kld_stats(model):
        rc, out, err = run(capsys, "-m", model, "--kl-divergence-base", base, "--kl-divergence")
        assert rc == 0, err
        stat = lambda name: float(re.search(rf"^{re.escape(name)}\s*:\s*(-?[0-9.]+)", out, re.M).group(1))
        return stat("Mean    KLD"), stat("Same top p"), stat("Mean PPL(base)"), stat("Mean PPL(Q)")

    kld_self, top_self, base_ppl, _ = kld_stats(f16)
    assert base_ppl == pytest.approx(ppl_f16, rel=1e-3)     # the base read back is the base written
    assert abs(kld_self) < 1e-4 and top_self == 100.0         # a model against itself: only 16-bit rounding
    kld, top, _, ppl_q = kld_stats(q4_0)
    assert kld > 0.005 and top < 100.0 and ppl_q > 0

    # the same KLD from llama.cpp's logits of both models
    _, _, base_logits = llama_cpp_method(llama_cpp, f16, N_CTX, n_chunks, want_logits=True)
    _, _, q_logits = llama_cpp_method(llama_cpp, q4_0, N_CTX, n_chunks, want_logits=True)
    ref = []
    for b, q in zip(base_logits, q_logits):
        lb = b - b.max(1, keepdims=True) - np.log(np.exp(b - b.max(1, keepdims=True)).sum(1, keepdims=True))
        lq = q - q.max(1, keepdims=True) - np.log(np.exp(q - q.max(1, keepdims=True)).sum(1, keepdims=True))
        ref.extend((np.exp(lb) * (lb - lq)).sum(1))
    print(f"KLD(F16 || Q4_0) {kld:.5f}, from llama.cpp's logits {np.mean(ref):.5f}; same top {top:.2f}%")
    assert abs(kld / np.mean(ref) - 1) < 0.2, (kld, np.mean(ref))


def test_errors_are_one_line(smollm2_path, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    rc, out, err = run(capsys, "-m", smollm2_path, "-f", short, "-c", N_CTX)
    assert rc == 1 and err.strip().splitlines()[-1].startswith("error: you need at least 256 tokens")
    not_kld = tmp_path / "x.kld"
    not_kld.write_bytes(b"hello world, not logits")
    rc, out, err = run(capsys, "-m", smollm2_path, "--kl-divergence-base", not_kld, "--kl-divergence")
    assert rc == 1 and "does not look like a file of log-probabilities" in err
    rc, out, err = run(capsys, "-m", smollm2_path)
    assert rc == 1 and "-f FILE" in err
    with pytest.raises(PerplexityError):
        count_chunks(100, 64, -1)
    assert count_chunks(1000, 128, -1) == 7 and count_chunks(1000, 128, 3) == 3
