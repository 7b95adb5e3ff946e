"""engine/constrain.py: llguidance gets our vocabulary (byte-level BPE and SentencePiece), request shapes
become grammars, bad schemas and grammars are errors naming the problem, and generation under a
grammar stays in its language (llama.cpp's json.gbnf and arithmetic.gbnf, tests/data/grammars/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from engine.constrain import (ConstraintError, close_objects, compile_grammar, grammar_text, llg_tokenizer,
                              schema_from_response_format)

GRAMMARS = Path(__file__).parent / "data" / "grammars"


@pytest.fixture(scope="module")
def engines(smollm2_path, gemma3_path):
    from engine.engine import Engine

    return {"smollm2": Engine.load(smollm2_path, n_ctx=1024, n_threads=2),
            "gemma3": Engine.load(gemma3_path, n_ctx=1024, n_threads=2)}


@pytest.mark.parametrize("name,kind", [("smollm2", "bpe"), ("gemma3", "spm")])
def test_vocabulary_handed_to_llguidance(engines, name, kind):
    """Every token's bytes as our tokenizer renders them; control tokens marked special; EOG = EOS."""
    tok = engines[name].tokenizer
    assert tok.vocab_type == kind
    llt = llg_tokenizer(tok)
    assert llt is llg_tokenizer(tok)  # built once
    assert llt.vocab_size == tok.n_vocab
    assert sorted(llt.eos_tokens) == sorted(tok.eog_ids)
    text = "Héllo wörld, 12 + 34 = 46 {\"a\": [1, 2]} 日本"
    ids = tok.tokenize(text, add_bos=False)
    assert llt.decode_bytes(ids) == text.encode()
    assert llt.tokenize_str(text) == ids  # llguidance tokenizes with our tokenizer
    for i in range(0, tok.n_vocab, max(1, tok.n_vocab // 2000)):
        if tok.is_control(i):
            assert llt.is_special_token(i)
        else:
            assert llt.decode_bytes([i]) == tok.token_to_piece(i, special=True)


def test_request_shapes():
    assert schema_from_response_format({"type": "text"}) is None
    assert schema_from_response_format({"type": "json_object"}) == {"type": "object"}
    s = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert schema_from_response_format({"type": "json_schema", "json_schema": {"name": "x", "schema": s, "strict": True}}) == s
    assert schema_from_response_format({"type": "json_schema", "name": "x", "schema": s}) == s  # Responses' text.format
    with pytest.raises(ConstraintError, match="response_format.type"):
        schema_from_response_format({"type": "yaml"})
    with pytest.raises(ConstraintError, match="only one"):
        grammar_text(grammar="root ::= \"a\"", json_schema=s)


def test_objects_closed_as_llama_cpp_reads_them():
    s = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}},
         "$defs": {"d": {"type": "object", "properties": {"c": {}}}},
         "allOf": [{"properties": {"x": {}}}]}
    c = close_objects(s)
    assert c["additionalProperties"] is False and c["properties"]["a"]["additionalProperties"] is False
    assert c["$defs"]["d"]["additionalProperties"] is False
    assert "additionalProperties" not in c["allOf"][0]
    assert "additionalProperties" not in s  # a copy
    assert close_objects({"type": "object", "properties": {}, "additionalProperties": True})["additionalProperties"] is True


def test_bad_schema_and_grammar_name_the_problem(engines):
    tok = engines["smollm2"].tokenizer
    with pytest.raises(ConstraintError, match="invalid JSON schema.*strin"):
        compile_grammar(tok, json_schema={"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(ConstraintError, match="foo"):
        compile_grammar(tok, grammar='root ::= "a" foo')
    with pytest.raises(ConstraintError, match="not valid JSON"):
        compile_grammar(tok, json_schema="{not json")
    assert compile_grammar(tok, grammar="") is None and compile_grammar(tok) is None


def _mask(engine, grammar, prefix: str) -> np.ndarray:
    c = grammar.constraint()
    for i in engine.tokenize(prefix, add_bos=False):
        c.accept(i)
    return c.allowed(engine.n_vocab)


def test_mask_allows_exactly_the_continuations(engines):
    eng = engines["smollm2"]
    g = compile_grammar(eng.tokenizer, json_schema={"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                     "required": ["ok"]})
    allowed = _mask(eng, g, '{"ok": ')
    pieces = {eng.tokenizer.token_to_piece(int(i)).decode("utf-8", "replace") for i in np.nonzero(allowed)[0]}
    assert pieces and all(p and ("true".startswith(p) or "false".startswith(p) or p in ("true", "false"))
                          for p in pieces), sorted(pieces)[:20]
    done = _mask(eng, g, '{"ok": true}')
    assert set(np.nonzero(done)[0]) == set(eng.tokenizer.eog_ids)  # only the end of generation is left


def test_mask_applied_before_the_other_samplers(engines):
    """Greedy picks the best allowed token, not the best token: the mask comes first in the chain."""
    from engine.sampler import Sampler, SamplerParams

    eng = engines["smollm2"]
    g = compile_grammar(eng.tokenizer, grammar='root ::= "yes" | "no"')
    logits = np.zeros(eng.n_vocab, np.float32)
    yes, no = eng.tokenize("yes", add_bos=False)[0], eng.tokenize("no", add_bos=False)[0]
    logits[no], logits[yes], logits[7] = 1.0, 0.5, 9.0
    s = Sampler(SamplerParams(temperature=0, top_k=1, seed=1), constraint=g.constraint())
    assert s.sample(logits) == no
    s = Sampler(SamplerParams(temperature=1.0, top_k=1, seed=1), constraint=g.constraint())
    assert s.sample(logits) == no  # top_k=1 after the mask keeps "no", not the forbidden token 7


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_json_gbnf_gives_json(engines, name):
    eng = engines[name]
    r = eng.generate("A JSON object describing a cat:", max_tokens=60, temperature=0,
                     grammar=(GRAMMARS / "json.gbnf").read_text(), stop=None)
    if r.finish_reason == "stop":
        assert isinstance(json.loads(r.text), dict)
    else:  # cut by max_tokens: still a prefix the grammar allows
        assert r.text.startswith("{")


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_arithmetic_gbnf(engines, name):
    """Equations only: every finished line matches the grammar's language (checked here with a regex
    written from arithmetic.gbnf), and what follows the last one uses only its characters."""
    eng = engines[name]
    r = eng.generate("Equations:\nx = 1 + 2\ny = a * 4\n", max_tokens=40, temperature=0,
                     grammar=(GRAMMARS / "arithmetic.gbnf").read_text())
    ws = r"[ \t\n]*"
    term = rf"(?:[a-z][a-z0-9_]*{ws}|[0-9]+{ws}|\({ws}.*\){ws})"
    line = rf"{term}(?:[-+*/]{term})*={ws}{term}\n"
    done = r.text[:r.text.rfind("\n") + 1] if r.finish_reason == "length" else r.text
    lines = re.findall(rf"{line}", done)
    assert lines and "".join(lines) == done, r.text
    assert re.fullmatch(r"[a-z0-9_ \t\n()+\-*/=]*", r.text[len(done):]), r.text


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_character_classes_and_repetition(engines, name):
    grammar = 'root ::= [A-Z]{3} "-" [0-9]{2,4} ("/" [a-f0-9]{1,6})?'
    r = engines[name].generate("Product code:", max_tokens=20, temperature=0.8, seed=3, grammar=grammar)
    assert r.finish_reason == "stop" and re.fullmatch(r"[A-Z]{3}-[0-9]{2,4}(/[a-f0-9]{1,6})?", r.text), r.text


def test_generate_with_json_schema_validates(engines):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
              "required": ["name", "tags"]}
    for eng in engines.values():
        r = eng.generate("JSON:", max_tokens=60, temperature=0.7, seed=5, json_schema=schema)
        jsonschema.validate(json.loads(r.text), schema)


def test_unknown_sampling_argument_is_named(engines):
    with pytest.raises(TypeError, match="xtc_probabilty"):
        engines["smollm2"].generate("x", max_tokens=1, xtc_probabilty=0.5)


def test_cli_grammar_and_json_schema_flags(smollm2_path, tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent

    def run(*args):
        return subprocess.run([sys.executable, "-m", "engine", "generate", "-m", str(smollm2_path), "-t", "2", *args],
                              cwd=root, capture_output=True, text=True, timeout=600)

    gf = tmp_path / "digits.gbnf"
    gf.write_text('root ::= [0-9]{3} "-" [0-9]{4}\n')
    r = run("-p", "Phone:", "-n", "12", "--temp", "0", "--grammar-file", str(gf))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", r.stdout.strip()), r.stdout
    r = run("-p", "x", "-j", "{not json")
    assert r.returncode == 1 and "--json-schema is not valid JSON" in r.stderr
    r = run("-p", "x", "-n", "4", "-j", '{"type": "object", "properties": {"a": {"type": "strin"}}}')
    assert r.returncode == 1 and "strin" in r.stderr
