"""Write tiny random-weight GGUF models for architectures that have no small public model.

    python tools/make_tiny_gguf.py llama-moe OUT.gguf [--seed 0]

`llama-moe` is the Mixtral layout of the `llama` architecture (as karakuri-8x7b): router
`ffn_gate_inp`, stacked experts `ffn_{gate,up,down}_exps`, with the tensor names, metadata keys and
types of real files. The vocabulary is a byte-level BPE trained here with HF `tokenizers` on a small
built-in text, so llama.cpp can load the file and tokenize like any `gpt2`-type model.
Weights are random but scaled so activations stay in a realistic range (logits not all tied).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CORPUS = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
To be, or not to be, that is the question. All that glitters is not gold. def main(): return 0
Once upon a time there was a small model that wanted to be tested against llama.cpp, token for token.
東京は日本の首都です。 Numbers 0123456789 and symbols !@#$%^&*() {}[] <> are here too.
""" * 4


def train_bpe_vocab(vocab_size: int, specials: list[str]) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token_types) of a byte-level BPE trained on CORPUS; specials appended as control."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    return tokens, merges, [int(t) for t in types]


@dataclass
class MoEShape:
    n_embd: int = 64
    n_ff: int = 96
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_expert: int = 4
    n_expert_used: int = 2
    n_ctx: int = 512


def _q(w: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def write_llama_moe(path: Path, seed: int = 0, shape: MoEShape = MoEShape(),
                    expert_type=gguf.GGMLQuantizationType.Q8_0, attn_type=gguf.GGMLQuantizationType.Q8_0) -> Path:
    rng = np.random.default_rng(seed)
    s = shape
    tokens, merges, types = train_bpe_vocab(384, ["<|begin_of_text|>", "<|end_of_text|>"])
    n_vocab = len(tokens)
    hd = s.n_embd // s.n_head

    def rand(*dims, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(dims[-1])
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-moe")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 2)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(True)

    def add(name, arr, qtype=gguf.GGMLQuantizationType.F32):
        data = arr if qtype == gguf.GGMLQuantizationType.F32 else _q(arr, qtype)
        w.add_tensor(name, data, raw_shape=arr.shape if qtype == gguf.GGMLQuantizationType.F32 else data.shape,
                     raw_dtype=qtype)

    add("token_embd.weight", rand(n_vocab, s.n_embd, scale=1.0), gguf.GGMLQuantizationType.Q8_0)
    add("output_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
    add("output.weight", rand(n_vocab, s.n_embd, scale=2.0 / np.sqrt(s.n_embd)), gguf.GGMLQuantizationType.Q8_0)
    for i in range(s.n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
        add(p + "attn_q.weight", rand(s.n_head * hd, s.n_embd), attn_type)
        add(p + "attn_k.weight", rand(s.n_head_kv * hd, s.n_embd), attn_type)
        add(p + "attn_v.weight", rand(s.n_head_kv * hd, s.n_embd), attn_type)
        add(p + "attn_output.weight", rand(s.n_embd, s.n_head * hd), attn_type)
        add(p + "ffn_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
        add(p + "ffn_gate_inp.weight", rand(s.n_expert, s.n_embd, scale=1.0))
        add(p + "ffn_gate_exps.weight", rand(s.n_expert, s.n_ff, s.n_embd), expert_type)
        add(p + "ffn_up_exps.weight", rand(s.n_expert, s.n_ff, s.n_embd), expert_type)
        add(p + "ffn_down_exps.weight", rand(s.n_expert, s.n_embd, s.n_ff), expert_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


WRITERS = {"llama-moe": write_llama_moe}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(WRITERS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(WRITERS[args.kind](args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
