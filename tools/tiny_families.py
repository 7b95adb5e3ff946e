"""Tiny random-weight GGUFs of the Qwen 2.5, Qwen 3, Qwen 3 MoE, Phi-3.5 and Gemma 2 families.

    python tools/make_tiny_gguf.py qwen2|qwen3|qwen3moe|phi3|gemma2 OUT.gguf [--seed 0] [--ftype F32]

Each mirrors one published file of its family (`Family.source`): the architecture string, metadata
keys, tensor names, tokenizer model, pre-type, special tokens and chat template (llama.cpp's copy in
models/templates, which tools/fetch_test_models.py takes from the llama-cpp-python sdist), and the
quantization mix: Q4_K_M as llama-quantize picks a type per tensor (`q4_k_m_type`, checked against
llama.cpp's own quantizer by tests/test_architectures.py), or the all-Q8_0 of Qwen's own Qwen3
files. `--ftype F32` writes the same model unquantized (what llama-quantize would start from).
Dimensions are tiny multiples of 256 (the K-quant super-block); the weights are random normal,
scaled so activations stay in a realistic range and llama.cpp's greedy choices are firm; sliding
windows and soft-caps are set small enough that the tests' prompts exercise them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

import make_tiny_gguf as tiny
from kquant_encode import quantize

T = gguf.GGMLQuantizationType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = (int(gguf.TokenType[k]) for k in
                                                ("NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "BYTE"))
FILE_TYPES = {"Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "F32": gguf.LlamaFileType.ALL_F32}


@dataclass(frozen=True)
class Family:
    arch: str
    source: str            # the published file whose layout this follows
    template: str          # its chat template, as llama.cpp's models/templates/ holds it
    ftype: str             # "Q4_K_M" | "Q8_0"
    n_ctx: int             # {arch}.context_length
    n_embd: int = 256
    n_ff: int = 512        # expert_feed_forward_length for qwen3moe
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    tied: bool = False     # no output.weight: the LM head is token_embd
    n_expert: int = 0
    n_expert_used: int = 0


FAMILIES = {
    "qwen2": Family("qwen2", "bartowski/Qwen2.5-7B-Instruct-GGUF Qwen2.5-7B-Instruct-Q4_K_M.gguf",
                    "Qwen-Qwen2.5-7B-Instruct.jinja", "Q4_K_M", n_ctx=32768),
    "qwen3": Family("qwen3", "Qwen/Qwen3-0.6B-GGUF Qwen3-0.6B-Q8_0.gguf", "Qwen-Qwen3-0.6B.jinja", "Q8_0",
                    n_ctx=40960, n_embd=128, n_ff=384, n_layer=3, tied=True),  # 4 heads x 64 > n_embd, as 0.6B
    "qwen3moe": Family("qwen3moe", "Qwen/Qwen3-30B-A3B-GGUF Qwen3-30B-A3B-Q4_K_M.gguf", "Qwen-Qwen3-0.6B.jinja",
                       "Q4_K_M", n_ctx=40960, n_ff=256, n_head=8, n_expert=16, n_expert_used=4),
    "phi3": Family("phi3", "bartowski/Phi-3.5-mini-instruct-GGUF Phi-3.5-mini-instruct-Q4_K_M.gguf",
                   "microsoft-Phi-3.5-mini-instruct.jinja", "Q4_K_M", n_ctx=8192, n_head_kv=4),
    "gemma2": Family("gemma2", "bartowski/gemma-2-2b-it-GGUF gemma-2-2b-it-Q4_K_M.gguf", "google-gemma-2-2b-it.jinja",
                     "Q4_K_M", n_ctx=8192, tied=True),
}

PHI3_ORIG_CTX = 512        # rope.scaling.original_context_length: the tests' n_ctx 1024 takes the long factors
GEMMA2_WINDOW = 16         # attention.sliding_window, shorter than the test prompts (real: 4096)
PHI3_WINDOW = 16           # one llama.cpp ignores (as it ignores Phi's 2047 / 262144): short, so ignoring matters
GEMMA2_ATTN_SOFTCAP = 3.0  # attn_logit_softcapping sized to the tiny model's scores (real: 50 on larger ones)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def q4_k_m_type(name: str, fam: Family) -> T:
    """The type llama-quantize gives a 2-D tensor of these families for LLAMA_FTYPE_MOSTLY_Q4_K_M
    (llama_tensor_get_type_impl; every row here is a multiple of 256 long, so no fallback applies)."""
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    eight = fam.n_expert == 8
    if name == "output.weight" or (fam.tied and name == "token_embd.weight"):
        return T.Q6_K
    if name.endswith((".attn_v.weight", ".attn_qkv.weight")):  # a fused QKV counts as attn_v (category_is_attn_v)
        return T.Q8_0 if eight else T.Q6_K if use_more_bits(layer, fam.n_layer) else T.Q4_K
    if name.endswith(".attn_k.weight") and eight:
        return T.Q8_0
    if name.endswith(".attn_output.weight") and eight:
        return T.Q5_K
    if ".ffn_down" in name:
        return T.Q6_K if use_more_bits(layer, fam.n_layer) else T.Q4_K
    return T.Q4_K


class _Tensors:
    """Adds tensors to a writer in the family's types: norms, biases, rope factors and the router
    stay F32 (llama-quantize leaves them), matrices take the file type's choice."""

    def __init__(self, w: gguf.GGUFWriter, fam: Family, ftype: str, rng: np.random.Generator):
        self.w, self.fam, self.ftype, self.rng = w, fam, ftype, rng

    def qtype(self, name: str, ndim: int) -> T:
        if ndim == 1 or self.ftype == "F32" or ".ffn_gate_inp." in name:
            return T.F32
        return T.Q8_0 if self.ftype == "Q8_0" else q4_k_m_type(name, self.fam)

    def add(self, name: str, arr: np.ndarray):
        qtype = self.qtype(name, arr.ndim)
        data = arr.astype(np.float32) if qtype == T.F32 else quantize(arr, qtype)
        self.w.add_tensor(name, data, raw_shape=arr.shape if qtype == T.F32 else data.shape, raw_dtype=qtype)

    def rand(self, *dims, scale=None):
        scale = scale if scale is not None else 1 / np.sqrt(dims[-1])
        return (self.rng.standard_normal(dims) * scale).astype(np.float32)

    def norm(self, n, center=1.0):
        return center + self.rand(n, scale=0.1 * center)


# --- vocabularies


def bpe_vocab(n_bpe: int, specials: list[tuple[str, int]]):
    """(tokens, merges, types): a byte-level BPE trained on make_tiny_gguf's corpus, then `specials`
    (text, token type) as the real files append their added tokens."""
    tokens, merges, types = tiny.train_bpe_vocab(n_bpe, [])
    return tokens + [t for t, _ in specials], merges, types + [k for _, k in specials]


def spm_vocab(n_pieces: int, head: list[tuple[str, int]], tail: list[tuple[str, int]]):
    """(tokens, scores, types) of a SentencePiece-style vocabulary: `head` specials, the 256 byte
    tokens <0x00>..<0xFF>, word pieces learnt by BPE over `▁`-joined words (a piece's score is
    minus its merge rank, so llama.cpp's highest-score-first merging replays the BPE), then `tail`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.train_from_iterator([tiny.CORPUS], trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False))
    import json

    model = json.loads(tok.to_str())["model"]
    rank = {"".join(m.split(" ") if isinstance(m, str) else m): r for r, m in enumerate(model["merges"])}
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    tokens = [t for t, _ in head] + [f"<0x{b:02X}>" for b in range(256)] + pieces + [t for t, _ in tail]
    scores = [0.0] * len(head) + [0.0] * 256 + [-float(rank.get(p, len(rank) + i)) for i, p in enumerate(pieces)]
    scores += [0.0] * len(tail)
    types = [k for _, k in head] + [BYTE] * 256 + [NORMAL] * len(pieces) + [k for _, k in tail]
    return tokens, scores, types


QWEN_SPECIALS = [("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
                 ("<|object_ref_start|>", CONTROL), ("<|object_ref_end|>", CONTROL), ("<|box_start|>", CONTROL),
                 ("<|box_end|>", CONTROL), ("<tool_call>", USER_DEFINED), ("</tool_call>", USER_DEFINED),
                 ("<|fim_prefix|>", CONTROL), ("<|fim_middle|>", CONTROL), ("<|fim_suffix|>", CONTROL),
                 ("<|fim_pad|>", CONTROL), ("<|repo_name|>", CONTROL), ("<|file_sep|>", CONTROL)]
QWEN3_SPECIALS = QWEN_SPECIALS + [("<tool_response>", USER_DEFINED), ("</tool_response>", USER_DEFINED),
                                  ("<think>", USER_DEFINED), ("</think>", USER_DEFINED)]
PHI3_SPECIALS = [("<|endoftext|>", CONTROL), ("<|assistant|>", CONTROL), ("<|placeholder1|>", CONTROL),
                 ("<|placeholder2|>", CONTROL), ("<|placeholder3|>", CONTROL), ("<|placeholder4|>", CONTROL),
                 ("<|system|>", CONTROL), ("<|end|>", CONTROL), ("<|placeholder5|>", CONTROL),
                 ("<|placeholder6|>", CONTROL), ("<|user|>", CONTROL)]
GEMMA_HEAD = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN), ("<mask>", USER_DEFINED),
              ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL)]


def add_qwen_tokenizer(w: gguf.GGUFWriter, specials) -> int:
    tokens, merges, types = bpe_vocab(400, specials)
    tid = {t: i for i, t in enumerate(tokens)}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tid["<|im_end|>"])
    w.add_pad_token_id(tid["<|endoftext|>"])
    w.add_bos_token_id(tid["<|endoftext|>"])
    w.add_add_bos_token(False)
    return len(tokens)


def add_spm_tokenizer(w: gguf.GGUFWriter, head, tail, bos: str, eos: str, pad: str, add_bos: bool,
                      add_space_prefix: bool) -> int:
    tokens, scores, types = spm_vocab(320, head, tail)
    tid = {t: i for i, t in enumerate(tokens)}
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tid[bos])
    w.add_eos_token_id(tid[eos])
    w.add_unk_token_id(next(i for i, k in enumerate(types) if k == UNKNOWN))
    w.add_pad_token_id(tid[pad])
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(add_space_prefix)
    return len(tokens)


# --- the writer


def default_template(name: str) -> str:
    import fetch_test_models  # noqa: PLC0415

    return fetch_test_models.fetch_templates(fetch_test_models.DEFAULT_DIR, (name,))[0].read_text()


def write_family(kind: str, path: Path, seed: int = 0, ftype: str | None = None,
                 chat_template: str | None = None) -> Path:
    """The tiny `kind` model at `path` (a FAMILIES key), in its published file's types or `ftype`."""
    fam = FAMILIES[kind]
    ftype = ftype or fam.ftype
    if ftype not in FILE_TYPES:
        raise ValueError(f"ftype {ftype!r}: one of {', '.join(FILE_TYPES)}")
    a, s = fam.arch, fam
    w = gguf.GGUFWriter(str(path), a)
    w.add_name(f"tiny-{kind}")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff * (s.n_expert_used or 1))
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_file_type(FILE_TYPES[ftype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    rng = np.random.default_rng(seed)
    t = _Tensors(w, fam, ftype, rng)
    hd, n_q, n_kv = s.head_dim, s.n_head * s.head_dim, s.n_head_kv * s.head_dim

    if a in ("qwen2", "qwen3", "qwen3moe"):
        w.add_rope_freq_base(1000000.0)
        w.add_layer_norm_rms_eps(1e-6)
        if a != "qwen2":
            w.add_key_length(hd)
            w.add_value_length(hd)
        if a == "qwen3moe":
            w.add_expert_count(s.n_expert)
            w.add_expert_used_count(s.n_expert_used)
            w.add_expert_feed_forward_length(s.n_ff)
        n_vocab = add_qwen_tokenizer(w, QWEN_SPECIALS if a == "qwen2" else QWEN3_SPECIALS)
    elif a == "phi3":
        w.add_rope_scaling_orig_ctx_len(PHI3_ORIG_CTX)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_sliding_window(PHI3_WINDOW)
        w.add_float32(f"{a}.rope.scaling.attn_factor", 1.1902380714238083)
        n_vocab = add_spm_tokenizer(w, [("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL)], PHI3_SPECIALS,
                                    bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False,
                                    add_space_prefix=True)
    else:  # gemma2
        w.add_layer_norm_rms_eps(1e-6)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_float32(f"{a}.attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP)
        w.add_float32(f"{a}.final_logit_softcapping", 30.0)
        w.add_sliding_window(GEMMA2_WINDOW)
        n_vocab = add_spm_tokenizer(w, GEMMA_HEAD, [], bos="<bos>", eos="<eos>", pad="<pad>", add_bos=True,
                                    add_space_prefix=False)
    w.add_chat_template(chat_template if chat_template is not None else default_template(fam.template))

    # embeddings: a tied head reads token_embd, so its rows set the logits' spread
    t.add("token_embd.weight", t.rand(n_vocab, s.n_embd, scale=0.5 if fam.tied else 1.0))
    for i in range(s.n_layer):
        p = f"blk.{i}."
        t.add(p + "attn_norm.weight", t.norm(s.n_embd))
        if a == "phi3":
            t.add(p + "attn_qkv.weight", t.rand(n_q + 2 * n_kv, s.n_embd))
        else:
            for name, rows in (("attn_q", n_q), ("attn_k", n_kv), ("attn_v", n_kv)):
                scale = 2.0 / np.sqrt(s.n_embd) if a == "gemma2" and name != "attn_v" else None  # scores the cap bends
                t.add(p + name + ".weight", t.rand(rows, s.n_embd, scale=scale))
                if a == "qwen2":
                    t.add(p + name + ".bias", t.rand(rows, scale=0.5))
        if a in ("qwen3", "qwen3moe"):
            t.add(p + "attn_q_norm.weight", t.norm(hd))
            t.add(p + "attn_k_norm.weight", t.norm(hd))
        t.add(p + "attn_output.weight", t.rand(s.n_embd, n_q))
        if a == "gemma2":
            t.add(p + "post_attention_norm.weight", t.norm(s.n_embd, 2.0))
        t.add(p + "ffn_norm.weight", t.norm(s.n_embd))
        if a == "qwen3moe":
            t.add(p + "ffn_gate_inp.weight", t.rand(s.n_expert, s.n_embd, scale=2.0 / np.sqrt(s.n_embd)))
            t.add(p + "ffn_gate_exps.weight", t.rand(s.n_expert, s.n_ff, s.n_embd))
            t.add(p + "ffn_up_exps.weight", t.rand(s.n_expert, s.n_ff, s.n_embd))
            t.add(p + "ffn_down_exps.weight", t.rand(s.n_expert, s.n_embd, s.n_ff))
        elif a == "phi3":
            t.add(p + "ffn_up.weight", t.rand(2 * s.n_ff, s.n_embd))  # gate rows, then up rows
            t.add(p + "ffn_down.weight", t.rand(s.n_embd, s.n_ff))
        else:
            t.add(p + "ffn_gate.weight", t.rand(s.n_ff, s.n_embd))
            t.add(p + "ffn_up.weight", t.rand(s.n_ff, s.n_embd))
            t.add(p + "ffn_down.weight", t.rand(s.n_embd, s.n_ff))
        if a == "gemma2":
            t.add(p + "post_ffw_norm.weight", t.norm(s.n_embd, 2.0))
    t.add("output_norm.weight", t.norm(s.n_embd))
    if not fam.tied:
        t.add("output.weight", t.rand(n_vocab, s.n_embd, scale=5.0 / np.sqrt(s.n_embd)))  # peaked: firm greedy steps
    if a == "phi3":  # LongRoPE factors per rotated pair (real: short ~1-1.1, long ~1-40)
        t.add("rope_factors_long.weight", np.exp(rng.uniform(0.0, 1.5, hd // 2)).astype(np.float32))
        t.add("rope_factors_short.weight", rng.uniform(1.0, 1.1, hd // 2).astype(np.float32))
    tiny._finish(w)
    return path
