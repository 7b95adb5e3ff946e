"""Constrained decoding: JSON schemas and grammars through llguidance.

llguidance (guidance-ai's Rust library; its Python package needs no torch) compiles a JSON schema,
a Lark grammar or llama.cpp's GBNF into a matcher that gives, at every step, the set of tokens that
keep the output inside the language. We hand it the engine's own vocabulary (the bytes of every
token, control tokens marked as special) and our tokenizer, so byte-level BPE and SentencePiece
vocabularies both work, and apply its mask in the sampler before every other sampler.

    grammar = compile_grammar(tokenizer, json_schema={"type": "object", ...})   # ConstraintError if bad
    constraint = grammar.constraint()         # one per sequence: mask(logits) / accept(token)

Request shapes (OpenAI's and llama-server's), all turned into one llguidance grammar:
`response_format` {"type": "json_object"} | {"type": "json_schema", "json_schema": {"schema": ...}}
| {"type": "text"}; `json_schema` (a schema); `grammar` (GBNF, or Lark when it starts with
`%llguidance`). JSON output follows llama.cpp's json-schema-to-grammar where the two differ:
objects without `additionalProperties` get no extra keys, and whitespace is bounded the way
llama.cpp's `space` rule bounds it (so a small model cannot pad forever).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# llama.cpp's json-schema-to-grammar `space ::= | " " | "\n" [ \t]{0,20}`
JSON_WHITESPACE = r"(?:[ ]?|\n[ \t]{0,20})"
JSON_OPTIONS = {"whitespace_pattern": JSON_WHITESPACE}


class ConstraintError(ValueError):
    """A schema or grammar that cannot be compiled; the message is llguidance's (or names the construct)."""


def _llg():
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise ConstraintError("constrained decoding needs the llguidance package (pip install llguidance)") from e
    return llguidance


# --- the vocabulary, handed to llguidance


class _VocabForLLG:
    """What llguidance's TokenizerWrapper reads: every token's bytes (control tokens prefixed with
    0xFF, llguidance's mark for a special token, as its llama.cpp binding does), EOS, and a
    tokenize function (ours, without BOS or special-token parsing)."""

    def __init__(self, tokenizer):
        from .tokenizer import ATTR_CONTROL, ATTR_UNKNOWN

        special = ATTR_CONTROL | ATTR_UNKNOWN
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        for i in range(tokenizer.n_vocab):
            b = tokenizer.token_to_piece(i, special=True)
            if tokenizer.token_attr(i) & special:
                b = b"\xff" + b
                self.special_token_ids.append(i)
            self.tokens.append(b)
        eos = tokenizer.eos_id
        self.eos_token_id = eos if eos is not None else min(tokenizer.eog_ids, default=0)
        self.bos_token_id = tokenizer.bos_id
        self._tokenizer = tokenizer

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        return self._tokenizer.tokenize(text, add_bos=False, special=False)


def llg_tokenizer(tokenizer):
    """llguidance's LLTokenizer for our tokenizer, built once per tokenizer (it walks the vocabulary;
    about a second for Gemma 3's 262K tokens). Every end-of-generation token counts as EOS, so a
    grammar that is complete lets the model stop with any of them."""
    llt = getattr(tokenizer, "_llg_tokenizer", None)
    if llt is None:
        llg = _llg()
        eog = sorted(tokenizer.eog_ids) or [tokenizer.eos_id]
        llt = llg.LLTokenizer(llg.TokenizerWrapper(_VocabForLLG(tokenizer)), eos_token=eog)
        tokenizer._llg_tokenizer = llt
    return llt


# --- request shapes -> one llguidance grammar


def close_objects(schema: Any) -> Any:
    """A copy of `schema` where every object schema with `properties` and no `additionalProperties`
    gets `additionalProperties: false`, as llama.cpp's json-schema-to-grammar reads such schemas
    (and as OpenAI's strict mode requires). The output still validates against the original.
    `allOf` branches are left alone: closing each would forbid the others' properties."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if isinstance(s, list):
            for x in s:
                walk(x)
            return
        if not isinstance(s, dict):
            return
        if "properties" in s and "additionalProperties" not in s and "patternProperties" not in s:
            s["additionalProperties"] = False
        for key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(s.get(key), dict):
                for sub in s[key].values():
                    walk(sub)
        for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            walk(s.get(key))
        for key in ("prefixItems", "anyOf", "oneOf"):
            walk(s.get(key))

    walk(schema)
    return schema


def schema_from_response_format(response_format: Any) -> Any:
    """OpenAI's `response_format` -> a JSON schema, or None for plain text. Raises ConstraintError
    naming what is wrong with the object."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ConstraintError("'response_format' must be an object with a 'type'")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}  # llama-server also takes "schema" here
    if kind == "json_schema":
        js = response_format.get("json_schema")
        if isinstance(js, dict) and "schema" in js:
            schema = js["schema"]
        elif "schema" in response_format:  # the Responses API's text.format puts it at the top level
            schema = response_format["schema"]
        elif isinstance(js, dict):
            raise ConstraintError("'response_format.json_schema' must have a 'schema'")
        else:
            raise ConstraintError("'response_format' of type json_schema needs 'json_schema': {'name', 'schema'}")
        return {"type": "object"} if schema is None else schema
    raise ConstraintError(f"'response_format.type' must be 'text', 'json_object' or 'json_schema', not {kind!r}")


def grammar_text(*, grammar: str | None = None, json_schema: Any = None, response_format: Any = None,
                 lark: str | None = None) -> str | None:
    """The llguidance grammar (its JSON form) for one of the request shapes, or None when the request
    asks for none. GBNF is converted by llguidance's own converter; a construct it cannot express is
    a ConstraintError naming it. llguidance is imported only when there is something to compile: plain
    generation works without it."""
    given = [n for n, v in (("grammar", grammar), ("json_schema", json_schema), ("lark", lark)) if v is not None]
    schema = schema_from_response_format(response_format)
    if schema is not None:
        given.append("response_format")
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f"give only one of {', '.join(given)}: they would constrain the same output")
    llg = _llg()
    if lark is not None:
        return llg.LLMatcher.grammar_from_lark(lark)
    if grammar is not None:
        if not isinstance(grammar, str):
            raise ConstraintError("'grammar' must be a string (GBNF)")
        if not grammar.strip():
            return None
        if grammar.lstrip().startswith("%llguidance"):
            return llg.LLMatcher.grammar_from_lark(grammar)
        try:
            return llg.grammar_from("gbnf", grammar)
        except ValueError as e:
            raise ConstraintError(f"invalid grammar: {e}") from None
    if json_schema is None:
        json_schema = schema
    if json_schema is None:
        return None
    if isinstance(json_schema, str):
        try:
            json_schema = json.loads(json_schema)
        except ValueError as e:
            raise ConstraintError(f"'json_schema' is not valid JSON: {e}") from None
    if not isinstance(json_schema, (dict, bool)):
        raise ConstraintError("a JSON schema must be an object (or a boolean)")
    try:
        return llg.LLMatcher.grammar_from_json_schema(close_objects(json_schema), overrides=JSON_OPTIONS)
    except ValueError as e:
        raise ConstraintError(f"invalid JSON schema: {e}") from None


@dataclass
class CompiledGrammar:
    """A grammar checked against one vocabulary; `constraint()` makes a matcher per sequence."""

    text: str
    llt: Any

    def constraint(self) -> "Constraint":
        return Constraint(_llg().LLMatcher(self.llt, self.text, log_level=0))


def compile_grammar(tokenizer, *, grammar: str | None = None, json_schema: Any = None, response_format: Any = None,
                    lark: str | None = None) -> CompiledGrammar | None:
    """Check and compile a request's constraint for `tokenizer`; None when the request has none.
    Raises ConstraintError with llguidance's message for a schema or grammar it rejects."""
    text = grammar_text(grammar=grammar, json_schema=json_schema, response_format=response_format, lark=lark)
    if text is None:
        return None
    llt = llg_tokenizer(tokenizer)
    err = _llg().LLMatcher.validate_grammar(text, llt)
    if err and not err.startswith("WARNING"):
        what = "JSON schema" if (json_schema is not None or response_format is not None) else "grammar"
        raise ConstraintError(f"invalid {what}: {err}")
    return CompiledGrammar(text, llt)


class Constraint:
    """One sequence's matcher: `mask(logits)` sets every token the grammar forbids to -inf (in
    place), `accept(token)` advances it. The mask is computed once per step."""

    def __init__(self, matcher):
        self.m = matcher
        self._bits = None

    def allowed(self, n_vocab: int) -> np.ndarray:
        """Boolean mask over the first `n_vocab` tokens."""
        if self.m.is_error():
            raise ConstraintError(f"constraint failed: {self.m.get_error()}")
        bits = np.frombuffer(self.m.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:n_vocab].view(bool)
        if len(allowed) < n_vocab:  # tokens the vocabulary lacks (padded output rows) are never allowed
            allowed = np.concatenate([allowed, np.zeros(n_vocab - len(allowed), bool)])
        return allowed

    def mask(self, logits: np.ndarray) -> None:
        allowed = self.allowed(len(logits))
        if not allowed.any():
            raise ConstraintError("constraint allows no token here (the grammar has no continuation)")
        logits[~allowed] = -np.inf

    def accept(self, token: int) -> None:
        if not self.m.consume_token(int(token)):
            raise ConstraintError(f"token {token} rejected by the constraint: {self.m.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar admits nothing more (only an end-of-generation token)."""
        return self.m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.m.is_accepting()
