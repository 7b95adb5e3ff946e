"""`engine.Llama` as a drop-in for llama-cpp-python's `Llama`, with llama-cpp-python itself as the oracle.

One script written for llama-cpp-python (completion, streamed completion, chat, streamed chat,
logprobs, embeddings, tokenize/detokenize) runs twice on SmolLM2: as written, and with only its
import line changed to `from engine import Llama`. The two result sets must have the same key
trees everywhere, and the greedy texts must be equal. The prompts are ones where llama.cpp's greedy
choice is firm (no near-tie that the 8-bit rounding noise of either engine could flip).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

try:  # local servers speaking the Hub's protocol, for from_pretrained (fixtures, imported by name)
    from model_servers import host, store  # noqa: F401
except ImportError:  # a checkout without the model store
    host = store = None

SCRIPT = '''
from llama_cpp import Llama

llm = Llama(model_path=MODEL, n_ctx=512, n_threads=2, seed=1, verbose=False, embedding=True, logits_all=True)
chat = [{"role": "user", "content": "What is 2+2?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
results = {
    "completion": llm("The capital of France is", max_tokens=12, temperature=0),
    "completion_stream": list(llm.create_completion("The capital of France is", max_tokens=8, temperature=0,
                                                    stream=True)),
    "stop": llm("The capital of France is", max_tokens=12, temperature=0, stop=["\\n"]),
    "logprobs": llm("The sky is", max_tokens=3, temperature=0, logprobs=2),
    "chat": llm.create_chat_completion(messages=chat, max_tokens=16, temperature=0),
    "chat_stream": list(llm.create_chat_completion(messages=chat, max_tokens=16, temperature=0, stream=True)),
    "tool_call": llm.create_chat_completion(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=32, temperature=0),
    "json": llm.create_chat_completion(
        messages=[{"role": "user", "content": "Give me a JSON object with a name and an age."}], max_tokens=40,
        temperature=0, response_format={"type": "json_object", "schema": PERSON}),
    "embedding": llm.create_embedding("Hello world"),
    "embed": llm.embed("The quick brown fox"),
    "tokens": llm.tokenize(b"Hello world, <|im_start|>user"),
    "special_tokens": llm.tokenize(b"Hello world, <|im_start|>user", add_bos=False, special=True),
    "n_ctx": llm.n_ctx(),
    "n_vocab": llm.n_vocab(),
    "n_embd": llm.n_embd(),
    "bos_eos": [llm.token_bos(), llm.token_eos()],
}
results["text"] = llm.detokenize(results["special_tokens"])
results["text_special"] = llm.detokenize(results["special_tokens"], special=True)
'''


def run_script(script: str, model_path) -> dict:
    ns = {"MODEL": str(model_path)}
    exec(compile(script, "<llama-cpp-python script>", "exec"), ns)
    return ns["results"]


@pytest.fixture(scope="module")
def both(smollm2_path, llama_cpp) -> tuple[dict, dict]:
    """(llama-cpp-python's results, ours) for the same script; only the import line differs."""
    ours_script = SCRIPT.replace("from llama_cpp import Llama", "from engine import Llama")
    changed = [(a, b) for a, b in zip(SCRIPT.splitlines(), ours_script.splitlines()) if a != b]
    assert changed == [("from llama_cpp import Llama", "from engine import Llama")]
    return run_script(SCRIPT, smollm2_path), run_script(ours_script, smollm2_path)


def key_tree(x, keyed_by_data: bool = False):
    """The structure of a response: dict keys and list lengths all the way down, leaves as their kind
    (None stays None, numbers of any type are "number"), so values may differ but shapes may not.
    Legacy `top_logprobs` dicts are keyed by token text (data, not structure): only their values'
    kinds count there."""
    if isinstance(x, dict) and keyed_by_data:
        return {"<token>": sorted({str(key_tree(v)) for v in x.values()})}
    if isinstance(x, dict):
        return {k: ([key_tree(e, True) for e in v] if k == "top_logprobs" and isinstance(v, list)
                    and all(isinstance(e, dict) and "token" not in e for e in v) else key_tree(v))
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [key_tree(v) for v in x]
    if x is None:
        return None
    if isinstance(x, (bool, str, bytes)):
        return type(x).__name__
    return "number" if np.isscalar(x) else type(x).__name__


@pytest.mark.parametrize("name", ["completion", "completion_stream", "stop", "logprobs", "chat", "chat_stream",
                                  "tool_call", "json", "embedding", "embed", "tokens", "special_tokens", "text",
                                  "n_ctx", "bos_eos"])
def test_same_shapes_and_keys(both, name):
    ref, ours = both
    if name in ("tool_call", "json"):  # constrained: the texts (and so their lengths) may differ
        for r in (ref, ours):
            r[name]["usage"] = {k: 0 for k in r[name]["usage"]}
    assert key_tree(ours[name]) == key_tree(ref[name])


def test_constrained_chat_parses_as_llama_cpp_s_does(both):
    """A named tool_choice gives a call whose arguments are JSON for the tool's schema; a json_object
    response_format with a schema gives JSON for it, in both engines."""
    import json

    for res in both:
        choice = res["tool_call"]["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        call = choice["message"]["tool_calls"][0]
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        assert choice["message"]["function_call"] == call["function"]
        person = json.loads(res["json"]["choices"][0]["message"]["content"])
        assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_greedy_completion_text_equals_llama_cpp(both):
    ref, ours = both
    for name in ("completion", "stop"):
        r, o = ref[name]["choices"][0], ours[name]["choices"][0]
        assert o["text"] == r["text"] and o["finish_reason"] == r["finish_reason"], name
        assert ours[name]["usage"] == ref[name]["usage"]
    assert ours["stop"]["choices"][0]["text"] == " Paris."  # cut before the stop string, which is dropped


def test_streamed_completion_is_the_same_text_in_the_same_pieces(both):
    ref, ours = both
    texts = lambda chunks: [c["choices"][0]["text"] for c in chunks]  # noqa: E731
    assert texts(ours["completion_stream"]) == texts(ref["completion_stream"])
    assert [c["choices"][0]["finish_reason"] for c in ours["completion_stream"]] == \
           [c["choices"][0]["finish_reason"] for c in ref["completion_stream"]]
    assert len({c["id"] for c in ours["completion_stream"]}) == 1


def test_greedy_chat_equals_llama_cpp_streamed_or_not(both):
    ref, ours = both
    r, o = ref["chat"]["choices"][0], ours["chat"]["choices"][0]
    assert o["message"] == r["message"] and o["finish_reason"] == r["finish_reason"]
    assert ours["chat"]["usage"] == ref["chat"]["usage"]
    assert ours["chat"]["id"].startswith("chatcmpl-") and ours["chat"]["object"] == "chat.completion"
    deltas = lambda chunks: [c["choices"][0]["delta"] for c in chunks]  # noqa: E731
    assert deltas(ours["chat_stream"]) == deltas(ref["chat_stream"])
    assert "".join(d.get("content", "") for d in deltas(ours["chat_stream"])) == o["message"]["content"]


def test_logprobs_pick_the_same_tokens_with_close_values(both):
    ref, ours = both
    r, o = ref["logprobs"]["choices"][0]["logprobs"], ours["logprobs"]["choices"][0]["logprobs"]
    assert o["tokens"] == r["tokens"] and o["text_offset"] == r["text_offset"]
    # the two engines' logits differ by their rounding noise: a few tenths of a nat at most
    np.testing.assert_allclose(o["token_logprobs"], np.array(r["token_logprobs"], float), atol=0.3)
    for tok, top in zip(o["tokens"], o["top_logprobs"]):
        assert tok in top and len(top) in (2, 3)


def test_token_embeddings_match_llama_cpp(both):
    """SmolLM2 has no pooling of its own: llama.cpp gives one vector per token (the output-normed
    hidden states), and so do we."""
    ref, ours = both
    for a, b in ((ref["embed"], ours["embed"]), (ref["embedding"]["data"][0]["embedding"],
                                                 ours["embedding"]["data"][0]["embedding"])):
        a, b = np.array(a, float), np.array(b, float)
        assert a.shape == b.shape and a.shape[1] == ours["n_embd"]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        assert cos.min() > 0.99, cos
    assert ours["embedding"]["usage"] == ref["embedding"]["usage"]


def test_tokens_and_sizes_equal_llama_cpp(both):
    ref, ours = both
    for name in ("tokens", "special_tokens", "text", "text_special", "n_ctx", "n_vocab", "n_embd", "bos_eos"):
        assert ours[name] == ref[name], name
    assert isinstance(ours["text"], bytes)


# --- our own behaviour beyond the shared script (one instance for the module)

@pytest.fixture(scope="module")
def llm(smollm2_path):
    from engine import Llama

    return Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)


def test_eval_scores_and_generate(llm, smollm2_path, llama_cpp):
    """The low-level loop: eval fills `scores`, generate yields llama.cpp's greedy tokens."""
    from engine import Llama

    ids = llm.tokenize(b"The capital of France is")
    llm.reset()
    llm.eval(ids)
    assert llm.n_tokens == len(ids) and list(llm.input_ids[: llm.n_tokens]) == ids
    last = llm.eval_logits[-1]
    eng = llm._engine  # the same model evaluated from an empty context by the engine's own path
    np.testing.assert_allclose(last, eng.logits(ids)[-1], rtol=0, atol=1e-3)
    ref = llama_cpp.Llama(model_path=str(smollm2_path), n_ctx=256, n_threads=2, verbose=False)
    want = [t for _, t in zip(range(6), ref.generate(ids, temp=0))]
    # the prompt is in the context with its logits at hand: sampled from them, nothing evaluated again
    got = [t for _, t in zip(range(6), llm.generate(ids, temp=0))]
    assert got == want
    llm.reset()
    assert [t for _, t in zip(range(6), llm.generate(ids, temp=0))] == want
    # after a completion the state shows what the context holds: the prompt and all but the last token
    out = llm("The capital of France is", max_tokens=4, temperature=0)
    assert llm.n_tokens == len(ids) + 3 and list(llm.input_ids[: len(ids) + 1]) == ids + want[:1]
    assert out["choices"][0]["text"] == llm.detokenize(want[:4]).decode()
    full = Llama(model_path=str(smollm2_path), n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    full.eval(ids)
    np.testing.assert_allclose(full.scores[: len(ids)], eng.logits(ids), rtol=0, atol=1e-3)


def test_same_instance_seed_gives_the_same_sampled_answers(smollm2_path):
    """Without a seed, llama-cpp-python derives each request's seed from the instance's: two instances
    made with the same seed answer the same sequence of requests identically."""
    from engine import Llama

    one, other = (Llama(model_path=str(smollm2_path), n_ctx=64, n_threads=2, seed=11, verbose=False)
                  for _ in range(2))
    a = [one("Once upon a time", max_tokens=8)["choices"][0]["text"] for _ in range(2)]
    b = [other("Once upon a time", max_tokens=8)["choices"][0]["text"] for _ in range(2)]
    assert a == b and a[0] != a[1]
    seeded = [one("Once upon a time", max_tokens=8, seed=5)["choices"][0]["text"] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_echo_max_tokens_and_context_limits(llm):
    r = llm("The sky is", max_tokens=4, temperature=0, echo=True, logprobs=1)
    choice = r["choices"][0]
    assert choice["text"].startswith("The sky is") and r["usage"]["completion_tokens"] == 4
    lp = choice["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == r["usage"]["prompt_tokens"] + 4
    # max_tokens <= 0 or None: the rest of the context, cut to fit as llama-cpp-python does
    ids = llm.tokenize(b"word " * 240)
    r = llm(ids, max_tokens=100, temperature=0)
    assert r["usage"]["total_tokens"] <= llm.n_ctx()
    with pytest.raises(ValueError, match="exceed context window"):
        llm(llm.tokenize(b"word " * 300), max_tokens=1)
    # eval past the context fails cleanly, and the engine's cache bookkeeping stays right
    want = llm("The sky is", max_tokens=4, temperature=0)["choices"][0]["text"]
    llm.reset()
    with pytest.raises(ValueError, match="context is full"):
        llm.eval(llm.tokenize(b"word " * 300))
    assert llm("The sky is", max_tokens=4, temperature=0)["choices"][0]["text"] == want


def test_pooled_embeddings_and_normalize(smollm2_path):
    from engine import Llama

    emb = Llama(model_path=str(smollm2_path), n_ctx=128, n_threads=2, verbose=False, embedding=True,
                pooling_type=1)  # LLAMA_POOLING_TYPE_MEAN
    out = emb.create_embedding(["Hello world", "Hi"])
    assert [d["index"] for d in out["data"]] == [0, 1] and len(out["data"][0]["embedding"]) == 576
    v = np.array(emb.embed("Hello world", normalize=True))
    eng = emb._engine
    np.testing.assert_allclose(v, eng.embed("Hello world", pooling="mean"), atol=1e-5)
    second = np.array(emb.embed(["Hello world", "Hi there friend"], normalize=True)[1])
    np.testing.assert_allclose(second, eng.embed("Hi there friend", pooling="mean"), atol=1e-5)


def test_chat_format_names(smollm2_path):
    from engine import Llama

    llm = Llama(model_path=str(smollm2_path), n_ctx=128, n_threads=2, verbose=False, chat_format="chatml")
    out = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
    assert out["choices"][0]["message"]["role"] == "assistant"
    with pytest.raises(ValueError, match="unknown chat template 'no-such-format'"):
        Llama(model_path=str(smollm2_path), n_ctx=128, verbose=False, chat_format="no-such-format")


def test_arguments_ignored_refused_and_unknown(smollm2_path):
    from engine import Llama

    path = str(smollm2_path)
    # GPU placement and speed/memory knobs are accepted (llama-cpp-python ignores the former on a CPU build)
    Llama(model_path=path, n_ctx=64, verbose=False, main_gpu=0, tensor_split=[1.0], offload_kqv=True,
          use_mlock=True, flash_attn=True, n_ubatch=128, n_threads_batch=2, type_k=1)
    for bad, match in [(dict(lora_path="x.gguf"), "lora_path"), (dict(kv_overrides={"a": 1}), "kv_overrides"),
                       (dict(rope_freq_base=5e5), "rope_freq_base"), (dict(type_k=8), "type_k"),
                       (dict(pooling_type=4), "pooling_type")]:
        with pytest.raises(ValueError, match=match):
            Llama(model_path=path, n_ctx=64, verbose=False, **bad)
    with pytest.warns(UserWarning, match="f16_kv"):
        Llama(model_path=path, n_ctx=64, verbose=False, f16_kv=True)
    with pytest.raises(ValueError, match="Model path does not exist"):
        Llama(model_path=path + ".missing")


def test_unsupported_request_arguments_are_clear_errors(llm):
    with pytest.raises(NotImplementedError, match="logits_processor"):
        llm("Hi", logits_processor=[lambda ids, scores: scores])
    with pytest.raises(ValueError, match="fill-in-the-middle"):
        llm("def f(", suffix="return 1")
    with pytest.raises(ValueError, match="Tool choice 'nope' not found"):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], tools=[
            {"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "nope"}})


def test_grammar_mirostat_and_legacy_functions(llm, llama_cpp):
    gbnf = 'root ::= "yes" | "no"'
    assert llm("Is the sky blue? Answer:", grammar=gbnf, max_tokens=4)["choices"][0]["text"] in ("yes", "no")
    grammar = llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)  # llama-cpp-python's own object
    assert llm("Is fire cold? Answer:", grammar=grammar, max_tokens=4)["choices"][0]["text"] in ("yes", "no")
    assert llm("Hi", mirostat_mode=2, max_tokens=4, seed=3)["usage"]["completion_tokens"] <= 4
    with pytest.raises(TypeError, match="grammar must be GBNF text"):
        llm("Hi", grammar=42)
    out = llm.create_chat_completion(
        [{"role": "user", "content": "Weather in Rome?"}], max_tokens=32, temperature=0,
        functions=[{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}],
        function_call={"name": "get_weather"})
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_from_pretrained_through_the_model_store(request, llm):
    """From a local server speaking the Hub's protocol (tests/model_servers.py): a glob picks the file."""
    if store is None:
        pytest.skip("this checkout has no model store (tests/model_servers.py)")
    request.getfixturevalue("store")  # a fresh store, HF_ENDPOINT at the local server
    from engine import Llama

    got = Llama.from_pretrained("test-org/SmolLM2-GGUF", "*Q4_1.gguf", n_ctx=256, n_threads=2, verbose=False)
    want = llm("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"]
    assert got("The capital of France is", max_tokens=6, temperature=0)["choices"][0]["text"] == want
    with pytest.raises(ValueError, match="Multiple files found in test-org/SmolLM2-GGUF that match"):
        Llama.from_pretrained("test-org/SmolLM2-GGUF", "*.gguf", verbose=False)
    with pytest.raises(ValueError, match="No files found"):
        Llama.from_pretrained("test-org/SmolLM2-GGUF", "*Q2_K*.gguf", verbose=False)


def test_from_pretrained_without_a_store_is_a_clear_error(monkeypatch):
    from engine import Llama

    monkeypatch.setitem(sys.modules, "engine.store", None)  # as in an installation without the store
    with pytest.raises(NotImplementedError, match="needs the model store"):
        Llama.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "*q4_k_m.gguf")


def test_import_engine_stays_light():
    """`import engine` and its lazy public names load neither numba nor GPU libraries."""
    code = ("import sys, engine\n"
            "from engine import Engine, Completion, Piece, ContextLengthError, GGUF, GGUFError, Llama\n"
            "heavy = [m for m in ('numba', 'cupy', 'pyopencl') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "assert engine.Llama.__module__ == 'engine.llama_compat' and engine.Engine.__name__ == 'Engine'\n"
            "assert 'Llama' in dir(engine)\n"
            "try:\n    engine.NoSuchName\nexcept AttributeError as e:\n    assert 'NoSuchName' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

