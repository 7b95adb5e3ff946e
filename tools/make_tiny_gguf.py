"""Write tiny random-weight GGUF models for architectures that have no small public model.

    python tools/make_tiny_gguf.py llama-moe|gpt-oss OUT.gguf [--seed 0] [--shape 20b]
    python tools/make_tiny_gguf.py qwen2|qwen3|qwen3moe|phi3|gemma2 OUT.gguf [--ftype F32]  # tools/tiny_families.py
    python tools/make_tiny_gguf.py describe REAL.gguf SHAPE.json      # a real model's shape, no weights
    python tools/make_tiny_gguf.py twin SHAPE.json OUT.gguf           # that shape with random weights

`llama-moe` is the Mixtral layout of the `llama` architecture (as karakuri-8x7b): router
`ffn_gate_inp`, stacked experts `ffn_{gate,up,down}_exps`, with the tensor names, metadata keys and
types of real files. The vocabulary is a byte-level BPE trained here with HF `tokenizers` on a small
built-in text, so llama.cpp can load the file and tokenize like any `gpt2`-type model.
`gpt-oss` is OpenAI's architecture as ggml-org's gpt-oss GGUFs hold it: MXFP4 experts with biases,
Q8_0 attention with biases, F32 norms, router and sinks, YaRN RoPE, a sliding window (shorter than
the test prompts) on every other layer, the harmony special tokens, `tokenizer.ggml.pre = gpt-4o`
and gpt-oss's own chat template (tools/fetch_test_models.py takes it from llama.cpp's sources).
`--shape 20b` writes gpt-oss-20b's real dimensions (24 layers, 32 experts, top-4; ~12 GB) for
decode-speed measurements.
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


def train_bpe_vocab(vocab_size: int, specials: list[str], corpus: str = CORPUS) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token_types) of a byte-level BPE trained on `corpus`; specials appended as control."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([corpus], trainer)
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


def _random_weights(rng: np.random.Generator):
    """rand(*dims, scale=1/sqrt(fan_in)) -> float32 normal weights."""
    def rand(*dims, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(dims[-1])
        return (rng.standard_normal(dims) * scale).astype(np.float32)
    return rand


def _tensor_adder(w: gguf.GGUFWriter):
    """add(name, float array, qtype=F32): the tensor, quantized to qtype by gguf's reference quantizer."""
    F32 = gguf.GGMLQuantizationType.F32

    def add(name, arr, qtype=F32):
        data = arr if qtype == F32 else _q(arr, qtype)
        w.add_tensor(name, data, raw_shape=arr.shape if qtype == F32 else data.shape, raw_dtype=qtype)
    return add


def _finish(w: gguf.GGUFWriter):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama_moe(path: Path, seed: int = 0, shape: MoEShape = MoEShape(),
                    expert_type=gguf.GGMLQuantizationType.Q8_0, attn_type=gguf.GGMLQuantizationType.Q8_0) -> Path:
    rng = np.random.default_rng(seed)
    s = shape
    tokens, merges, types = train_bpe_vocab(384, ["<|begin_of_text|>", "<|end_of_text|>"])
    n_vocab = len(tokens)
    hd = s.n_embd // s.n_head

    rand = _random_weights(rng)

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

    add = _tensor_adder(w)

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
    _finish(w)
    return path


# harmony's special tokens in o200k_harmony order (ids 199998.. in the real vocabulary)
HARMONY_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>", "<|reserved_200001|>", "<|return|>",
                    "<|constrain|>", "<|reserved_200004|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>",
                    "<|reserved_200009|>", "<|reserved_200010|>", "<|reserved_200011|>", "<|call|>"]

HARMONY_CORPUS = """<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06 Current date: 2026-12-03 Reasoning: medium # Valid channels: analysis, commentary, final.
Channel must be included for every message. Calls to these tools must go to the commentary channel: 'functions'.
<|start|>user<|message|>What is the weather in Tokyo?<|end|><|start|>assistant<|channel|>analysis<|message|>
The user asks about weather. We should call the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather
<|constrain|>json<|message|>{"location": "Tokyo", "unit": "celsius"}<|call|> The answer is 42. final answer
namespace functions { type get_weather = (_: { location: string, }) => any; } // Gets the weather
"""


@dataclass
class GptOssShape:
    n_embd: int = 96
    n_ff: int = 64            # expert_feed_forward_length
    n_layer: int = 4          # even layers windowed, odd layers full
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 16
    n_expert: int = 8
    n_expert_used: int = 4
    n_ctx: int = 1024
    sliding_window: int = 16  # shorter than the test prompts: both attention kinds are exercised
    rope_factor: float = 4.0
    rope_orig_ctx: int = 256
    n_vocab_bpe: int = 480
    expert_type: str = "MXFP4"
    attn_type: str = "Q8_0"


GPT_OSS_SHAPES = {
    "tiny": GptOssShape(),
    # gpt-oss-20b's real dimensions (config.json of openai/gpt-oss-20b)
    "20b": GptOssShape(n_embd=2880, n_ff=2880, n_layer=24, n_head=64, n_head_kv=8, head_dim=64, n_expert=32,
                       n_expert_used=4, n_ctx=131072, sliding_window=128, rope_factor=32.0, rope_orig_ctx=4096,
                       n_vocab_bpe=2000),
}


def default_gpt_oss_template() -> str:
    import fetch_test_models  # noqa: PLC0415  (tools/ is on sys.path when this runs as a script or from tests)

    return fetch_test_models.fetch_gpt_oss_template(fetch_test_models.DEFAULT_DIR).read_text()


def write_gpt_oss(path: Path, seed: int = 0, shape: GptOssShape | str = "tiny", chat_template: str | None = None) -> Path:
    """A random-weight gpt-oss GGUF in the real files' tensor names, metadata keys and types."""
    F32 = gguf.GGMLQuantizationType.F32
    s = GPT_OSS_SHAPES[shape] if isinstance(shape, str) else shape
    Q8, MX = gguf.GGMLQuantizationType[s.attn_type], gguf.GGMLQuantizationType[s.expert_type]
    rng = np.random.default_rng(seed)
    corpus_tokens, merges, types = train_bpe_vocab(s.n_vocab_bpe, [], corpus=CORPUS + HARMONY_CORPUS * 4)
    tokens = corpus_tokens + HARMONY_SPECIALS
    types = types + [int(gguf.TokenType.CONTROL)] * len(HARMONY_SPECIALS)
    tid = {t: i for i, t in enumerate(tokens)}
    n_vocab = len(tokens)
    hd = s.head_dim
    template = chat_template if chat_template is not None else default_gpt_oss_template()

    rand = _random_weights(rng)

    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_name("tiny-gpt-oss")
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_expert_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(150000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(s.rope_factor)
    w.add_rope_scaling_orig_ctx_len(s.rope_orig_ctx)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_sliding_window(s.sliding_window)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tid["<|startoftext|>"])
    w.add_eos_token_id(tid["<|return|>"])
    w.add_pad_token_id(tid["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(template)

    add = _tensor_adder(w)

    big = s.n_expert * s.n_ff * s.n_embd > 1 << 26

    def add_experts(name, n_out, n_in):
        if not big or MX != gguf.GGMLQuantizationType.MXFP4:
            add(name, rand(s.n_expert, n_out, n_in, scale=2.0 / np.sqrt(n_in)), MX)
            return
        # real-size files (speed runs): random MXFP4 blocks directly, no float copy of 10 GB of weights;
        # E8M0 exponents near 2^-6 keep the values (|e2m1| <= 6) of order 1/sqrt(n_in)
        blocks = rng.integers(0, 256, size=(s.n_expert, n_out, n_in // 32, 17), dtype=np.uint8)
        blocks[..., 0] = rng.integers(119, 123, size=blocks.shape[:-1], dtype=np.uint8)
        w.add_tensor(name, blocks.reshape(s.n_expert, n_out, n_in // 32 * 17), raw_shape=blocks.reshape(
            s.n_expert, n_out, -1).shape, raw_dtype=MX)

    add("token_embd.weight", rand(n_vocab, s.n_embd, scale=1.0), Q8)
    add("output_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
    add("output.weight", rand(n_vocab, s.n_embd, scale=5.0 / np.sqrt(s.n_embd)), Q8)  # peaked: firm greedy steps
    for i in range(s.n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
        for name, rows in (("attn_q", s.n_head * hd), ("attn_k", s.n_head_kv * hd), ("attn_v", s.n_head_kv * hd)):
            add(p + name + ".weight", rand(rows, s.n_embd), Q8)
            add(p + name + ".bias", rand(rows, scale=0.1))
        add(p + "attn_output.weight", rand(s.n_embd, s.n_head * hd), Q8)
        add(p + "attn_output.bias", rand(s.n_embd, scale=0.1))
        add(p + "attn_sinks.weight", rand(s.n_head, scale=1.0))
        add(p + "post_attention_norm.weight", 1.0 + rand(s.n_embd, scale=0.1))
        add(p + "ffn_gate_inp.weight", rand(s.n_expert, s.n_embd, scale=1.0 / np.sqrt(s.n_embd)))
        add(p + "ffn_gate_inp.bias", rand(s.n_expert, scale=0.1))
        add_experts(p + "ffn_gate_exps.weight", s.n_ff, s.n_embd)
        add(p + "ffn_gate_exps.bias", rand(s.n_expert, s.n_ff, scale=0.1))
        add_experts(p + "ffn_up_exps.weight", s.n_ff, s.n_embd)
        add(p + "ffn_up_exps.bias", rand(s.n_expert, s.n_ff, scale=0.1))
        add_experts(p + "ffn_down_exps.weight", s.n_embd, s.n_ff)
        add(p + "ffn_down_exps.bias", rand(s.n_expert, s.n_embd, scale=0.1))
    _finish(w)
    return path


WRITERS = {"llama-moe": write_llama_moe, "gpt-oss": write_gpt_oss}


def _family_writer(kind: str):
    """A writer of tools/tiny_families.py (Qwen 2.5, Qwen 3, Qwen 3 MoE, Phi-3.5, Gemma 2), imported on use."""
    def write(path: Path, seed: int = 0, **kw) -> Path:
        import tiny_families  # noqa: PLC0415  (tools/ is on sys.path, as for fetch_test_models)

        return tiny_families.write_family(kind, path, seed=seed, **kw)
    return write


WRITERS.update({kind: _family_writer(kind) for kind in ("qwen2", "qwen3", "qwen3moe", "phi3", "gemma2")})


# --- shape twins: a real model's dimensions and quant types with random weights (speed measurements
# on machines the real file cannot reach, e.g. benchmarks/gpu_check.sh on a GPU machine)

def describe(path: Path) -> dict:
    """A real GGUF's shape: metadata (tokenizer arrays left out) and every tensor's name, type, shape."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from engine.gguf_file import GGUF

    g = GGUF.open(path)
    meta = {}
    for k, v in g.metadata.items():
        if k.startswith("tokenizer.") and k not in ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                                                    "tokenizer.ggml.eos_token_id"):
            continue
        meta[k] = v.tolist() if isinstance(v, np.ndarray) else v
    n_vocab = g.tensors["token_embd.weight"].ne[1]
    return {"source": Path(path).name, "n_vocab": int(n_vocab), "metadata": meta,
            "tensors": [[t.name, t.type_name, list(t.ne)] for t in g.tensors.values()]}


def _random_blocks(qtype: gguf.GGMLQuantizationType, ne: list[int], rng: np.random.Generator) -> np.ndarray:
    """Valid random storage for one tensor: random bytes with every f16 scale finite and modest
    (tests/qdata.py explains the offsets), float tensors N(1, 0.05) for norms or N(0, 0.05)."""
    shape = tuple(reversed(ne))
    if qtype == gguf.GGMLQuantizationType.F32:
        base = 1.0 if len(shape) == 1 else 0.0
        return (base + rng.standard_normal(shape) * 0.05).astype(np.float32)
    if qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        f = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        return f.astype(np.float16) if qtype == gguf.GGMLQuantizationType.F16 else (f.view(np.uint32) >> 16).astype(np.uint16)
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(ne)) // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scale_offsets = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "IQ4_NL": (0,),
                     "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_XS": (0,)}
    for off in scale_offsets.get(qtype.name, ()):
        d = (rng.uniform(0.2, 1.0, n_blocks) * 0.006 * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        blocks[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    if qtype.name == "MXFP4":
        blocks[:, 0] = rng.integers(118, 124, n_blocks, dtype=np.uint8)
    return blocks.reshape(*shape[:-1], -1)


def write_twin(shape_json: Path, path: Path, seed: int = 0) -> Path:
    """A GGUF with the described model's metadata, tensor names, types and shapes, random weights and
    a synthetic SentencePiece vocabulary of the same size (special, byte and word pieces)."""
    import json

    spec = json.loads(Path(shape_json).read_text())
    meta, n_vocab = spec["metadata"], spec["n_vocab"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), meta["general.architecture"])
    for k, v in meta.items():
        if k in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                 "tokenizer.ggml.eos_token_id", "general.alignment"):
            continue
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v) if v >= 0 else w.add_int32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            w.add_array(k, v)
        elif isinstance(v, list):
            w.add_array(k, [int(x) if isinstance(x, bool) else x for x in v])
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(n_vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(n_vocab)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, type_name, ne in spec["tensors"]:
        qtype = gguf.GGMLQuantizationType[type_name]
        data = _random_blocks(qtype, ne, rng)
        w.add_tensor(name, data, raw_shape=tuple(reversed(ne)) if qtype.name in ("F32", "F16", "BF16")
                     else data.shape, raw_dtype=qtype)
    _finish(w)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=sorted(WRITERS) + ["describe", "twin"],
                    help="a writer; `describe REAL.gguf OUT.json` (a model's shape), `twin SHAPE.json OUT.gguf`")
    ap.add_argument("src", type=Path, nargs="?", help="describe: the real GGUF; twin: the shape JSON")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=sorted(GPT_OSS_SHAPES), default="tiny", help="gpt-oss dimensions")
    ap.add_argument("--ftype", choices=["Q4_K_M", "Q8_0", "F32"], default=None,
                    help="qwen2/qwen3/qwen3moe/phi3/gemma2: types other than the published file's")
    args = ap.parse_args(argv)
    if args.kind == "describe":
        import json

        args.out.write_text(json.dumps(describe(args.src), indent=0) + "\n")
        print(args.out)
        return 0
    if args.kind == "twin":
        print(write_twin(args.src, args.out, seed=args.seed))
        return 0
    if args.src is not None:
        ap.error(f"{args.kind} takes only OUT")
    kw = {"shape": args.shape} if args.kind == "gpt-oss" else {"ftype": args.ftype} if args.ftype else {}
    print(WRITERS[args.kind](args.out, seed=args.seed, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
