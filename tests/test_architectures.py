"""qwen2, qwen3, qwen3moe, phi3 and gemma2 against llama.cpp, on tiny random-weight files in the
layout, keys, tokenizers, chat templates and quantization mixes of published GGUFs of each family
(tools/tiny_families.py).

The checks and bars are test_conformance.py's own (imported, not copied): identical token ids, logits
cosine and top-1 at firm positions, teacher-forced and free-running greedy; then prefill against
token-by-token decode, every tensor consumed, llama-quantize's own type choices, the chat prompt as
llama.cpp formats it, `inspect`, and the same conformance checks on the OpenCL backend (PoCL in CI).
The tiny files are sized so that their quirks matter: Gemma 2's sliding window (16) is shorter than
the prompts and its attention cap (3) bends the scores (dropping either fails the bars), Phi-3's
LongRoPE takes its long factors at the tests' n_ctx and its short ones at 256, and Phi-3 carries a
short sliding window that llama.cpp (and so this engine) ignores.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

import fetch_test_models
import llama_ref
from engine.engine import Engine
from engine.gguf_file import GGUF
from gpu_devices import backend_names, device_backend
from llama_ref import cosine, margins
from test_conformance import PROMPTS, check_free_running, check_logits, check_teacher_forced

ARCHS = ["qwen2", "qwen3", "qwen3moe", "phi3", "gemma2"]
SUPPORTED = "gemma2, gemma3, gpt-oss, llama, phi3, qwen2, qwen3, qwen3moe"
REQUIRE_MODELS = os.environ.get("GGUFPY_REQUIRE_MODELS") == "1"  # CI: a missing template fails, never skips


@pytest.fixture(scope="session")
def arch_files(tmp_path_factory, llama_cpp):
    """arch -> its tiny GGUF (written on first use, with the chat template of its family)."""
    import tiny_families

    tmp = tmp_path_factory.mktemp("archs")
    made = {}

    def get(arch: str, ftype: str | None = None):
        key = (arch, ftype)
        if key not in made:
            template = fetch_test_models.DEFAULT_DIR / tiny_families.FAMILIES[arch].template
            if not template.exists():
                if REQUIRE_MODELS:
                    pytest.fail(f"{template} is missing (run tools/fetch_test_models.py)")
                pytest.skip(f"{template.name} not fetched (python tools/fetch_test_models.py)")
            made[key] = tiny_families.write_family(arch, tmp / f"tiny-{arch}-{ftype or 'published'}.gguf",
                                                   ftype=ftype, chat_template=template.read_text())
        return made[key]

    return get


_engines: dict = {}


def engine_for(path, **kw) -> Engine:
    key = (str(path), tuple(sorted(kw.items())))
    if key not in _engines:
        _engines.clear()  # one model at a time keeps memory flat
        _engines[key] = Engine.load(path, **{"n_ctx": 1024, "n_threads": 2, "backend": "cpu", **kw})
    return _engines[key]


# --- conformance with llama.cpp (test_conformance.py's checks and bars)


@pytest.mark.parametrize("arch", ARCHS)
def test_tokens_match_llama_cpp(arch_files, arch):
    path = arch_files(arch)
    eng, llm = engine_for(path), llama_ref.llama(str(path))
    for text in PROMPTS + ["<|im_start|>user\n<tool_call>x</tool_call><|im_end|> <start_of_turn>model\n<|end|>"]:
        assert eng.tokenize(text) == llm.tokenize(text.encode(), add_bos=True)
        assert eng.tokenizer.tokenize(text, special=True) == llm.tokenize(text.encode(), add_bos=True, special=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_llama_cpp(arch_files, arch):
    path = arch_files(arch)
    eng = engine_for(path)
    for prompt in PROMPTS:
        check_logits(eng, path, eng.tokenize(prompt))


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_forced_greedy(arch_files, arch):
    path = arch_files(arch)
    check_teacher_forced(engine_for(path), path, PROMPTS[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_free_running_greedy(arch_files, arch):
    path = arch_files(arch)
    check_free_running(engine_for(path), path, PROMPTS[3])


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_equals_incremental_decode(arch_files, arch):
    """N prompt tokens at once == N single-token steps through the cache, in exact float32."""
    eng = engine_for(arch_files(arch), activations="f32")
    ids = eng.tokenize(PROMPTS[0])
    batch = eng.logits(ids)
    cache = eng.model.new_cache(64)
    steps = np.concatenate([eng.backend.to_numpy(eng.model.forward([t], cache)) for t in ids])
    assert cosine(batch, steps).min() > 0.9999
    assert (batch.argmax(-1) == steps.argmax(-1)).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_is_used(arch_files, arch):
    eng = engine_for(arch_files(arch))
    assert eng.model.w.unused() == set()


def test_phi3_takes_its_short_rope_factors_in_a_small_context(arch_files):
    """llama.cpp picks LongRoPE's factors by the context size (n_ctx 256 <= original 512: the short
    ones); the other tests run at 1024, with the long ones."""
    path = arch_files("phi3")
    eng = engine_for(path, n_ctx=256)
    assert eng.model.rope_for(eng.cache) is eng.model.rope_short
    assert engine_for(path).model.rope_for(eng.cache) is engine_for(path).model.rope_long
    eng = engine_for(path, n_ctx=256)
    ids = eng.tokenize(PROMPTS[3])
    llm = llama_ref.llama(str(path), 256)
    llm.reset()
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    ours = eng.logits(ids)
    min_cos, min_margin = llama_ref.bars(eng.gguf)
    assert np.median(cosine(ours, ref)) >= min_cos
    firm = margins(ref) >= min_margin
    assert (ours.argmax(-1) == ref.argmax(-1))[firm].all()


# --- the files: llama-quantize's types, chat templates, inspect


@pytest.mark.parametrize("arch", ARCHS)
def test_types_are_llama_quantize_s(arch_files, arch, llama_cpp, tmp_path):
    """The writer's per-tensor types equal those llama.cpp's quantizer picks for the same model given
    unquantized (Q4_K_M's mix of Q4_K/Q5_K/Q6_K by tensor and layer, or Qwen 3's all-Q8_0)."""
    import tiny_families

    ours = GGUF.open(arch_files(arch))
    out = tmp_path / "requant.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(tiny_families.FILE_TYPES[tiny_families.FAMILIES[arch].ftype])
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(arch_files(arch, "F32")).encode(), str(out).encode(), params) == 0
    theirs = GGUF.open(out)
    assert {n: (t.type_name, t.ne) for n, t in ours.tensors.items()} == \
           {n: (t.type_name, t.ne) for n, t in theirs.tensors.items()}
    assert ours.get("general.file_type") == theirs.get("general.file_type")


def llama_cpp_chat(llama_cpp, template: str, messages) -> str:
    """llama.cpp's own formatting (llama_chat_apply_template: the built-in format it detects in the
    template's source; no Jinja)."""
    arr = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(template.encode(), arr, len(messages), True, buf, len(buf))
    assert 0 < n <= len(buf)
    return buf.raw[:n].decode()


CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_prompt_is_llama_cpp_s(arch_files, arch, llama_cpp):
    """The family's own template, rendered by our Jinja, gives the prompt llama.cpp's built-in format
    for that family gives (ChatML for Qwen, phi3, gemma), token for token."""
    path = arch_files(arch)
    eng = engine_for(path)
    messages = CHAT[1:] if arch == "gemma2" else CHAT  # Gemma 2's template refuses a system message
    expected = llama_cpp_chat(llama_cpp, eng.gguf.get("tokenizer.chat_template"), messages)
    text = eng.apply_template(messages)
    bos = eng.tokenizer.bos_text or ""
    assert text.removeprefix(bos) == expected
    llm = llama_ref.llama(str(path))
    assert eng.chat_prompt(messages) == llm.tokenize(expected.encode(), add_bos=True, special=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_inspect_prints_the_tensor_table(arch_files, arch, capsys):
    from engine.cli import main

    path = arch_files(arch)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    g = GGUF.open(path)
    assert "general.architecture" in out and repr(arch) in out
    for t in g.tensors.values():
        assert any(line.split()[:2] == [t.name, t.type_name] for line in out.splitlines()), t.name


def test_an_unsupported_architecture_is_refused_with_the_supported_list(tmp_path):
    """DeepSeek-V2/V3 (`deepseek2`) and other architectures without a module: a clear refusal."""
    import subprocess
    import sys

    import gguf

    path = tmp_path / "deepseek2.gguf"
    w = gguf.GGUFWriter(str(path), "deepseek2")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from engine.models import UnsupportedArchitecture

    with pytest.raises(UnsupportedArchitecture, match=f"'deepseek2' is not supported; supported: {SUPPORTED}$"):
        Engine.load(path, n_ctx=64, n_threads=1, backend="cpu")
    r = subprocess.run([sys.executable, "-m", "engine", "generate", "-m", str(path), "-p", "hi", "-n", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "deepseek2" in r.stderr and SUPPORTED in r.stderr and "Traceback" not in r.stderr


def test_kquant_encoders_write_blocks_ggml_decodes():
    """tools/kquant_encode.py's blocks decode (by gguf-py and by `quant`) to values near the floats."""
    import gguf
    from kquant_encode import quantize

    from quant import GGMLType, QTensor

    x = (np.random.default_rng(0).standard_normal((4, 512)) * 0.05).astype(np.float32)
    for name, tol in (("Q4_K", 0.06), ("Q5_K", 0.03), ("Q6_K", 0.015)):
        blocks = quantize(x, gguf.GGMLQuantizationType[name])
        ours = QTensor.from_buffer(GGMLType[name], x.shape, blocks).dequantize()
        assert np.array_equal(ours, gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name]))
        assert np.abs(ours - x).std() < tol * x.std(), name


# --- on the device backends (PoCL in CI)


@pytest.mark.parametrize("backend", backend_names())
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_matches_llama_cpp_on_device(arch_files, arch, backend):
    path = arch_files(arch)
    device_backend(backend)  # skips (or fails in CI) when the device is missing
    eng = Engine.load(path, n_ctx=1024, n_threads=2, backend=backend)
    assert eng.backend.name == backend and eng.model.place.n_gpu_layers == eng.model.p.n_layer + 1
    check_logits(eng, path, eng.tokenize(PROMPTS[0]))
    check_teacher_forced(eng, path, PROMPTS[1])
    check_free_running(eng, path, PROMPTS[3])
