"""Hostile vocabularies are refused clearly, and whatever bytes a model produces reach the client as
valid UTF-8 (an incomplete character held back until complete, as llama.cpp does; invalid bytes as
U+FFFD, never a lone surrogate or a cut character)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.gguf_file import GGUF
from engine.generate import Utf8Stream
from engine.tokenizer import Tokenizer, TokenizerError


@pytest.fixture(scope="module")
def metadata(smollm2_path):
    return dict(GGUF.open(smollm2_path).metadata)


def _with(md: dict, **changes) -> dict:
    return {**md, **{f"tokenizer.ggml.{k}": v for k, v in changes.items()}}


def test_a_real_vocabulary_loads(metadata):
    assert Tokenizer(metadata).n_vocab == len(metadata["tokenizer.ggml.tokens"])


@pytest.mark.parametrize("what,change,message", [
    ("duplicate token", lambda t: {"tokens": t[:300] + [t[5]] + t[301:]}, "appears twice (ids 5 and 300)"),
    ("numbers for tokens", lambda t: {"tokens": np.arange(len(t), dtype=np.int32)}, "must be an array of strings"),
    ("a non-string token", lambda t: {"tokens": t[:10] + [3] + t[11:]}, "must be an array of strings"),
    ("token types too few", lambda t: {"token_type": np.ones(7, dtype=np.int32)}, "one for each of the"),
    ("token types as text", lambda t: {"token_type": ["1"] * len(t)}, "must be an array of numbers"),
    ("scores too many", lambda t: {"scores": np.zeros(len(t) + 1, dtype=np.float32)}, "one for each of the"),
    ("merges as numbers", lambda t: {"merges": np.arange(4, dtype=np.int32)}, "merges must be an array of strings"),
    ("no tokens", lambda t: {"tokens": []}, "cannot find tokenizer vocab"),
])
def test_invalid_vocabularies_are_rejected_clearly(metadata, what, change, message):
    md = _with(metadata, **change(list(metadata["tokenizer.ggml.tokens"])))
    with pytest.raises(TokenizerError, match="vocab") as e:
        Tokenizer(md)
    assert message in str(e.value), (what, str(e.value))


def test_a_duplicate_token_in_a_gguf_file_fails_the_load_clearly(tmp_path):
    """The same through a file and Engine.load: the error names the token and both ids."""
    import gguf_fuzz
    import make_tiny_gguf

    from engine.engine import Engine

    src = make_tiny_gguf.write_llama_moe(tmp_path / "ok.gguf")
    data = bytearray(src.read_bytes())
    fields = gguf_fuzz.layout(bytes(data))
    k = next(i for i, (o, n, kind) in enumerate(fields) if kind == "key" and data[o:o + n] == b"tokenizer.ggml.tokens")
    texts = [f for f in fields[k + 1:] if f[2] == "str"]  # the array's strings come first, in id order
    a = texts[40]
    b = next(j for j in range(41, len(texts)) if texts[j][1] == a[1])  # a later token of the same length
    data[texts[b][0]:texts[b][0] + a[1]] = data[a[0]:a[0] + a[1]]
    bad = tmp_path / "dup.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(TokenizerError, match=f"appears twice \\(ids 40 and {b}\\)"):
        Engine.load(str(bad))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.lists(st.binary(min_size=0, max_size=6), max_size=12))
def test_utf8_stream_never_emits_a_broken_character(pieces):
    """Any byte pieces: each emitted string is valid UTF-8 text, and together they are exactly the
    bytes decoded as a whole (nothing lost, nothing doubled, invalid bytes as U+FFFD)."""
    s = Utf8Stream()
    out = []
    for p in pieces:
        text = s.push(p)
        text.encode("utf-8")  # strict: a lone surrogate would raise
        out.append(text)
    out.append(s.flush())
    assert "".join(out) == b"".join(pieces).decode("utf-8", errors="replace")


def test_a_character_split_over_tokens_is_held_back_until_complete():
    s = Utf8Stream()
    euro = "€".encode()  # 3 bytes
    assert s.push(b"a" + euro[:1]) == "a"
    assert s.push(euro[1:2]) == ""
    assert s.push(euro[2:] + b"b") == "€b"
    assert s.push(b"\xff") == "\ufffd" and s.flush() == ""


def test_the_server_streams_a_random_models_bytes_as_valid_utf8(tmp_path):
    """The tiny random-weight model emits arbitrary byte tokens; every SSE chunk is valid UTF-8 JSON
    whose text holds no surrogate, and the streamed text equals the non-streamed one."""
    from live_server import LiveServer, tiny_model

    srv = LiveServer("-m", str(tiny_model(tmp_path / "tiny.gguf", seed=3)))
    try:
        checked = 0
        for seed in range(6):
            body = {"prompt": "x", "max_tokens": 48, "temperature": 1.5, "seed": seed}
            status, whole, _ = srv.post("/v1/completions", body)
            assert status == 200
            expected = json.loads(whole)["choices"][0]["text"]
            raw = srv.request("POST", "/v1/completions", json.dumps({**body, "stream": True}).encode())[1]
            streamed = []
            for line in raw.split("\n"):
                if line.startswith("data: ") and line != "data: [DONE]":
                    text = json.loads(line[6:])["choices"][0]["text"]
                    text.encode("utf-8")  # strict
                    streamed.append(text)
            assert "".join(streamed) == expected
            checked += "\ufffd" in expected or any(ord(c) > 127 for c in expected)
        assert checked, "the model never produced a non-ASCII byte: the test proves nothing"
    finally:
        srv.stop()
