"""engine.tokenizer against llama.cpp (llama-cpp-python, vocab_only) on the two real test models.

Token ids, detokenized bytes, single-token pieces, EOG sets and token attributes must be identical to
llama.cpp's. Besides the real vocabularies (SmolLM2: byte-level BPE, pre `smollm`; Gemma 3: SPM, 262k
tokens, byte fallback), variants are written to tmp files with some metadata changed (the pre-tokenizer
name, add_space_prefix, a few token texts) and loaded by both sides, so every `tokenizer.ggml.pre` regex
list and the loader's special-token rules are checked against llama.cpp too.

Tests that need the oracle skip when llama_cpp is not importable; the others always run.
"""

from __future__ import annotations

import ctypes
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from engine.gguf_file import GGUF, ValueType
from engine.pretokenizer import _PRE_NAMES, _PRE_REGEXES, _compile_regex, _unicode_classes
from engine.tokenizer import (
    ATTR_CONTROL,
    ATTR_RSTRIP,
    ATTR_USER_DEFINED,
    Tokenizer,
    TokenizerError,
)

try:
    import llama_cpp
    from llama_cpp import llama_cpp as L
except ImportError:  # pragma: no cover - CI installs llama-cpp-python
    llama_cpp = L = None

try:
    import tokenizers  # noqa: F401
    HAVE_HF = True
except ImportError:  # pragma: no cover
    HAVE_HF = False

needs_llama = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python (the oracle) is not installed")
pytestmark = pytest.mark.models

CORPUS_PATH = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
CORPUS = CORPUS_PATH.read_text(encoding="utf-8")

# edge cases, written with escapes so no editor can change them
CASES = [
    "", " ", "  ", "   ", "\n", "\n\n", "\n\n\n\n\n", "\t", "\t\t", " \t\n \r\n", "\r\n\r\n",
    "a", " a", "a ", " a ", "  leading and trailing  ", "\n\nleading newlines", "trailing newlines\n\n",
    "Hello world", "Hello  world", "Hello   world\n\n\nnext", "hello\tworld\t\tx", "    four\n        eight",
    "1234567", " 1234567 ", "12 345 6789", "3.14159265358979", "1,234,567.89", "0x7fffffff",
    "it's they're we've I'm he'll you'd don't", "IT'S THEY'RE WE'VE I'M HE'LL YOU'D", "'s 're 've 'm 'll 'd 't",
    "' ' ' '' '''", "rock 'n' roll", "he said ' hi ' .", "a , b . c ? d ! e",
    "x\u00a0y\u2003z\u3000w\u202fv\u0085u\u2028t\u2029s\u200bq\ufeffp",  # unicode spaces, ZWSP, BOM
    "\u00e9 e\u0301 \u0301 n\u0303", "\ufb01 \uff26\uff55\uff4c\uff4c", "\u0130stanbul \u0131 \u017f \u212a \u2126",
    "ÉRIC ÉCOLE Ωmega ǅemal", "\u4e2d\u6587\u6587\u672c", "\u65e5\u672c\u8a9e\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439",
    "\U0001F600\U0001F603\U0001F604", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",  # ZWJ family
    "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8", "\U0001F44D\U0001F3FD",
    "1\ufe0f\u20e3 #\ufe0f\u20e3", "\U0001F9D1\U0001F3FF\u200d\U0001F4BB", "\U00020000\U0002A6D6 \U0001D400",
    "\x00", "\x01\x04\x7f", "a\x04b!\x04!", "\x1c\x1d\x1e\x1f", "\ue000\uf8ff", "\U0010fffd",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>", "<pad><unk><mask>", "</s><s>", "<b>bold</b> <i>it</i> <table><tr><td>x</td></tr></table>",
    "<|endoftext|>text<|endoftext|>", "<unused0><unused99>", "[multimodal]", "<start_of_image>",
    "<|im_start|><|im_start|>", "<|im_start|", "|im_start|>", "<<|im_end|>>", "<end_of_turn >",
    "text <|im_end|> text", "  <start_of_turn>  ", "<0x0A>", "<0xFF><0x00>", "\u2581\u2581hello\u2581",
    "def f(x):\n\treturn x  # comment\n\n\nclass A:\n    pass\n",
    "if (a && b || !c) { x += 1; } // end",
    "a" * 300, "\u00e9" * 100, " " * 40 + "x", "\n" * 40, "\t" * 35 + "y", "ab" * 150,
]
CASES += [line for line in CORPUS.split("\n") if line] + [CORPUS]


# ------------------------------------------------------------------------------------------------ oracle
class Oracle:
    """llama.cpp's vocabulary through llama-cpp-python's low-level API."""

    def __init__(self, path):
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = L.llama_model_get_vocab(self.llm.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, ids, special: bool, remove_special: bool = False) -> bytes:
        arr = (L.llama_token * max(1, len(ids)))(*ids)
        n = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(n)
            r = L.llama_detokenize(self.vocab, arr, len(ids), buf, n, remove_special, special)
            if r >= 0:
                return buf.raw[:r]
            n = -r + 16

    def piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(512)
        r = L.llama_token_to_piece(self.vocab, token_id, buf, 512, 0, special)
        assert r >= 0
        return buf.raw[:r]

    def eog_ids(self) -> set[int]:
        return {i for i in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, i)}

    def attrs(self) -> list[int]:
        return [int(L.llama_vocab_get_attr(self.vocab, i)) for i in range(self.n_vocab)]

    def close(self):
        close = getattr(self.llm, "close", None)
        if close:
            close()


MODELS = ["smollm2", "gemma3"]
_built: dict[str, float] = {}


@pytest.fixture(scope="session")
def model_paths(request) -> dict[str, Path]:
    return {"smollm2": request.getfixturevalue("smollm2_path"), "gemma3": request.getfixturevalue("gemma3_path")}


@pytest.fixture(scope="session")
def tokenizers_(model_paths) -> dict[str, Tokenizer]:
    out = {}
    for name, path in model_paths.items():
        g = GGUF.open(path)
        t0 = time.perf_counter()
        out[name] = Tokenizer.from_gguf(g)
        _built[name] = time.perf_counter() - t0
    return out


@pytest.fixture(scope="session")
def oracles(model_paths):
    if llama_cpp is None:
        pytest.skip("llama-cpp-python (the oracle) is not installed")
    out = {name: Oracle(path) for name, path in model_paths.items()}
    yield out
    for o in out.values():
        o.close()


def _mismatches(tk: Tokenizer, oracle: Oracle, texts, add_bos_values=(False, True), special_values=(False, True)):
    bad = []
    for text in texts:
        for add_bos in add_bos_values:
            for special in special_values:
                ref = oracle.tokenize(text, add_bos, special)
                got = tk.tokenize(text, add_bos=add_bos, special=special)
                if ref != got:
                    bad.append((text[:80], add_bos, special, ref[:24], got[:24]))
    return bad


# ------------------------------------------------------------------------------------------------ basics
@pytest.mark.parametrize("name", MODELS)
def test_build_fast_and_metadata(name, tokenizers_, model_paths):
    tk = tokenizers_[name]
    assert _built[name] < 3.0, f"building the {name} tokenizer took {_built[name]:.2f}s"
    md = GGUF.open(model_paths[name]).metadata
    assert tk.n_vocab == len(md["tokenizer.ggml.tokens"]) == len(tk)
    assert tk.bos_id == md["tokenizer.ggml.bos_token_id"]
    assert tk.eos_id == md["tokenizer.ggml.eos_token_id"]
    assert tk.token_text(tk.eos_id) == md["tokenizer.ggml.tokens"][tk.eos_id] == tk.eos_text
    assert tk.bos_text == tk.tokens[tk.bos_id] and tk.tokens == md["tokenizer.ggml.tokens"]
    assert tk.is_eog(tk.eos_id) and not tk.is_eog(tk.bos_id)
    if name == "smollm2":
        assert tk.vocab_type == "bpe" and tk.pre_type == "smollm" and not tk.add_bos
        assert (tk.hf is not None) == HAVE_HF  # the HF BPE model does the merges when tokenizers is installed
        assert {tk.token_text(i) for i in tk.eog_ids} >= {"<|endoftext|>", "<|im_end|>"}
    else:
        assert tk.vocab_type == "spm" and tk.add_bos and not tk.add_space_prefix
        assert {tk.token_text(i) for i in tk.eog_ids} >= {"<eos>", "<end_of_turn>"}


def test_from_gguf_accepts_path_gguf_and_metadata(smollm2_path):
    g = GGUF.open(smollm2_path)
    ids = [Tokenizer.from_gguf(x).tokenize("Hello, world!") for x in (smollm2_path, str(smollm2_path), g, g.metadata)]
    assert ids[0] == ids[1] == ids[2] == ids[3] and ids[0]


@pytest.mark.parametrize("name", MODELS)
def test_tokenize_speed(name, tokenizers_):
    tk = tokenizers_[name]
    text = CORPUS * 3  # ~8.5 KB
    tk.tokenize(text)
    t0 = time.perf_counter()
    ids = tk.tokenize(text, special=True)
    dt = time.perf_counter() - t0
    assert len(ids) > 1000 and dt < 1.0, f"{dt:.3f}s for {len(text)} chars"


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_lossless_on_corpus(name, tokenizers_):
    tk = tokenizers_[name]
    for text in [CORPUS, *CORPUS.split("\n"), "  spaces  ", "\t\ttabs\n\n"]:
        assert tk.detokenize(tk.tokenize(text, add_bos=False)) == text
        assert tk.detokenize(tk.tokenize(text), remove_special=True) == text


@pytest.mark.parametrize("name", MODELS)
def test_streaming_pieces_never_cut_characters(name, tokenizers_):
    """Concatenated token_to_piece bytes are the text's UTF-8 bytes (a character split over byte tokens
    only becomes valid once all its pieces are joined)."""
    tk = tokenizers_[name]
    text = "日本語 👨‍👩‍👧‍👦 🇯🇵 Ω é ﬁ \U00020000 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35"
    ids = tk.tokenize(text, add_bos=False)
    pieces = [tk.token_to_piece(i) for i in ids]
    assert b"".join(pieces) == text.encode("utf-8")
    assert all(isinstance(p, bytes) for p in pieces)


def test_python_bpe_equals_hf_bpe(smollm2_path):
    """The Python merge loop (used without `tokenizers`, or for vocabularies HF cannot hold) gives the
    same ids as the HF model."""
    pytest.importorskip("tokenizers")
    hf = Tokenizer.from_gguf(smollm2_path)
    py = Tokenizer.from_gguf(smollm2_path)
    assert hf.hf is not None
    py.hf = None
    rnd = random.Random(3)
    texts = CASES + [_random_text(rnd) for _ in range(300)]
    for text in texts:
        for special in (False, True):
            assert py.tokenize(text, special=special) == hf.tokenize(text, special=special), repr(text)


def test_pre_regexes_compile_and_unicode_table():
    for exprs in _PRE_REGEXES.values():
        for e in exprs:
            _compile_regex(e)
    cls = _unicode_classes()
    letters = _compile_regex(r"\p{L}+")
    numbers = _compile_regex(r"\p{N}+")
    space = _compile_regex(r"\s+")
    assert letters.fullmatch("abcXYZéßΩжי日本語한") and not letters.search("0_ !\u0301")
    assert numbers.fullmatch("0123456789²½①١٢३") and not numbers.search("aZ ")
    assert space.fullmatch(" \t\n\r\x0b\x0c\x85\xa0\u3000\u2028") and not space.search("\x1c\x1f\u200b")
    assert set(cls) == {"N", "L", "M", "P", "S", "s"}


def test_unknown_pre_tokenizer_and_model_are_errors(smollm2_path):
    md = dict(GGUF.open(smollm2_path).metadata)
    with pytest.raises(TokenizerError, match="unknown pre-tokenizer"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerError, match="custom splitter"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.pre": "kimi-k2"})
    with pytest.raises(TokenizerError, match="unsupported tokenizer model"):
        Tokenizer.from_gguf({**md, "tokenizer.ggml.model": "t5"})
    tk = Tokenizer.from_gguf({k: v for k, v in md.items() if k != "tokenizer.ggml.pre"})
    assert tk.pre_type == "default"


# ------------------------------------------------------------------------------------------------ oracle
@needs_llama
@pytest.mark.parametrize("special", [False, True], ids=["plain", "special"])
@pytest.mark.parametrize("name", MODELS)
def test_tokenize_matches_llama_cpp(name, special, tokenizers_, oracles):
    bad = _mismatches(tokenizers_[name], oracles[name], CASES, special_values=(special,))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_special_token_parsing(name, tokenizers_, oracles):
    """Control tokens are single ids only with special=True; user-defined ones (Gemma's <b>, "\\n\\n")
    always; EOG-detected ones (Gemma's user-defined </s>) become control."""
    tk, o = tokenizers_[name], oracles[name]
    chat = ("<|im_start|>user\nHi<|im_end|>\n" if name == "smollm2" else "<start_of_turn>user\nHi<end_of_turn>\n")
    start = "<|im_start|>" if name == "smollm2" else "<start_of_turn>"
    sid = tk.token_to_id(start)
    assert tk.is_control(sid)
    with_special = tk.tokenize(chat, add_bos=False, special=True)
    without = tk.tokenize(chat, add_bos=False, special=False)
    assert with_special[0] == sid and sid not in without
    assert with_special == o.tokenize(chat, False, True) and without == o.tokenize(chat, False, False)
    if name == "gemma3":
        for text, attr in (("<b>", ATTR_USER_DEFINED), ("</s>", ATTR_USER_DEFINED | ATTR_CONTROL)):
            i = tk.token_to_id(text)
            assert tk.token_attr(i) == attr
            assert (tk.tokenize(text, add_bos=False) == [i]) == (attr == ATTR_USER_DEFINED)
            assert tk.tokenize(text, add_bos=False, special=True) == [i]
        assert tk.is_eog(tk.token_to_id("</s>"))


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_random_text_matches_llama_cpp(name, tokenizers_, oracles):
    rnd = random.Random(1234 + len(name))
    texts = [_random_text(rnd) for _ in range(1200)]
    bad = _mismatches(tokenizers_[name], oracles[name], texts, add_bos_values=(True,))
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_detokenize_matches_llama_cpp(name, tokenizers_, oracles):
    tk, o = tokenizers_[name], oracles[name]
    bad = []
    for text in CASES:
        for parse in (False, True):
            ids = o.tokenize(text, True, parse)
            for special in (False, True):
                for remove_special in (False, True):
                    ref = o.detokenize(ids, special, remove_special)
                    got = tk.detokenize_bytes(ids, special=special, remove_special=remove_special)
                    if ref != got:
                        bad.append((text[:60], parse, special, remove_special, ref[:60], got[:60]))
                    if not special and not remove_special:
                        assert tk.detokenize(ids) == ref.decode("utf-8", errors="replace")
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_round_trip_matches_llama_cpp(name, tokenizers_, oracles):
    tk, o = tokenizers_[name], oracles[name]
    for text in CASES:
        ours = tk.detokenize(tk.tokenize(text, add_bos=False))
        assert ours == o.detokenize(o.tokenize(text, False, False), False).decode("utf-8", errors="replace")


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_token_to_piece_matches_llama_cpp(name, tokenizers_, oracles):
    tk, o = tokenizers_[name], oracles[name]
    rnd = random.Random(7)
    n = tk.n_vocab
    sample = sorted({*range(min(3000, n)), *range(n - 500, n), *rnd.sample(range(n), 6000)})
    bad = [(i, special, o.piece(i, special), tk.token_to_piece(i, special))
           for i in sample for special in (False, True)
           if o.piece(i, special) != tk.token_to_piece(i, special)]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:5]}"
    with pytest.raises(IndexError):
        tk.token_to_piece(n)


@needs_llama
@pytest.mark.parametrize("name", MODELS)
def test_eog_special_ids_and_attrs_match_llama_cpp(name, tokenizers_, oracles):
    tk, o = tokenizers_[name], oracles[name]
    assert tk.n_vocab == o.n_vocab
    assert set(tk.eog_ids) == o.eog_ids()
    assert tk.bos_id == L.llama_vocab_bos(o.vocab)
    assert tk.eos_id == L.llama_vocab_eos(o.vocab)
    assert (tk.eot_id if tk.eot_id is not None else -1) == L.llama_vocab_eot(o.vocab)
    assert tk.add_bos == bool(L.llama_vocab_get_add_bos(o.vocab))
    assert tk.add_eos == bool(L.llama_vocab_get_add_eos(o.vocab))
    ref = o.attrs()
    bad = [(i, ref[i], tk.token_attr(i)) for i in range(tk.n_vocab) if ref[i] != tk.token_attr(i)]
    assert not bad, f"{len(bad)} attribute mismatches, first: {bad[:5]}"


# ------------------------------------------------------------------------------------------------ variants
_FMT = {ValueType.UINT8: "<B", ValueType.INT8: "<b", ValueType.UINT16: "<H", ValueType.INT16: "<h",
        ValueType.UINT32: "<I", ValueType.INT32: "<i", ValueType.FLOAT32: "<f", ValueType.BOOL: "<?",
        ValueType.UINT64: "<Q", ValueType.INT64: "<q", ValueType.FLOAT64: "<d"}


def _gguf_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def write_metadata_gguf(path: Path, metadata: dict, types: dict) -> Path:
    """A tensor-less GGUF v3 with these metadata values and types (enough for llama.cpp's vocab_only)."""
    out = [b"GGUF", struct.pack("<IQQ", 3, 0, len(metadata))]
    for key, value in metadata.items():
        vt = types[key]
        out += [_gguf_str(key), struct.pack("<i", vt[0])]
        if vt[0] == ValueType.STRING:
            out.append(_gguf_str(value))
        elif vt[0] == ValueType.ARRAY:
            out.append(struct.pack("<iQ", vt[1], len(value)))
            if vt[1] == ValueType.STRING:
                out += [_gguf_str(x) for x in value]
            else:
                out.append(np.asarray(value, dtype=np.dtype(_FMT[vt[1]])).tobytes())
        else:
            out.append(struct.pack(_FMT[vt[0]], value))
    path.write_bytes(b"".join(out))
    return path


def _variant(src: Path, dst: Path, **changes) -> Path:
    g = GGUF.open(src)
    md, types = dict(g.metadata), dict(g.parts[0].value_types)
    for key, (vt, value) in changes.items():
        key = key.replace("__", ".")
        md[key], types[key] = value, vt
    return write_metadata_gguf(dst, md, types)


def _check_variant(path: Path, texts, *, pieces=False, detok=True):
    tk, o = Tokenizer.from_gguf(path), Oracle(path)
    try:
        bad = _mismatches(tk, o, texts)
        assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"
        assert set(tk.eog_ids) == o.eog_ids()
        ref = o.attrs()
        assert [tk.token_attr(i) for i in range(tk.n_vocab)] == ref
        if detok:
            for text in texts:
                ids = o.tokenize(text, True, True)
                for special in (False, True):
                    for remove_special in (False, True):
                        assert tk.detokenize_bytes(ids, special, remove_special) == \
                            o.detokenize(ids, special, remove_special), (text, special, remove_special)
        if pieces:
            for i in range(tk.n_vocab):
                for special in (False, True):
                    assert tk.token_to_piece(i, special) == o.piece(i, special), (i, special)
        return tk
    finally:
        o.close()


_VARIANT_TEXTS = [line for line in CORPUS.split("\n") if line] + [
    "ÉRIC ÉCOLE ÀB Ab aB ǅx", "it's IT'S 'Re 'rE 'LL", "1234567 12 1 12345 ١٢٣٤", "  \n  \r\n\t x", "hello   world  ",
    "a/b/c\n\n/ x//y", "x\u00a0\u00a0y\u3000z", "한국어 我爱 ﾟｶﾀ", "foo$bar$", "abc  ", "'s's's", "12,345,678.90",
    "<|im_start|>system\nok<|im_end|>", "x , y . z ? w !", "a ' b 's 'm 're 've 'll 'd 't",
]
# one tokenizer.ggml.pre name per llama.cpp pre-tokenizer type
_ONE_PRE_PER_TYPE = sorted({pre_type: name for name, (pre_type, _) in sorted(_PRE_NAMES.items(), reverse=True)}.values())


@needs_llama
@pytest.mark.parametrize("pre", _ONE_PRE_PER_TYPE)
def test_every_pre_tokenizer_matches_llama_cpp(pre, smollm2_path, tmp_path):
    """SmolLM2's vocabulary and merges under each pre-tokenizer llama.cpp knows (its regex list, flags)."""
    path = _variant(smollm2_path, tmp_path / f"smollm2-{pre}.gguf", tokenizer__ggml__pre=((ValueType.STRING,), pre))
    tk = _check_variant(path, _VARIANT_TEXTS)
    assert tk.pre_type == _PRE_NAMES[pre][0]


@needs_llama
def test_spm_with_space_prefix_and_eos_matches_llama_cpp(gemma3_path, tmp_path):
    """Gemma's vocabulary the LLaMA-2 way: add_space_prefix (a space before the first fragment and after
    every special token; one leading space dropped when detokenizing) and add_eos."""
    path = _variant(gemma3_path, tmp_path / "gemma3-prefix.gguf",
                    tokenizer__ggml__add_space_prefix=((ValueType.BOOL,), True),
                    tokenizer__ggml__add_eos_token=((ValueType.BOOL,), True))
    texts = CASES[:80] + ["<start_of_turn>user\nHi<end_of_turn>", "  two", " one", "<b> x</b>"]
    tk = _check_variant(path, texts)
    assert tk.add_space_prefix and tk.add_eos


@needs_llama
def test_loader_special_token_rules_match_llama_cpp(smollm2_path, tmp_path):
    """Token texts that llama.cpp's loader treats specially: gpt-oss's <|return|>/<|call|> drop <|end|> from
    EOG and make it user-defined, <|channel|> etc. are forced user-defined, <|eot_id|> found by text becomes
    EOT + control, FIM tokens, "unused" control tokens, phi-3's RSTRIP."""
    tokens = list(GGUF.open(smollm2_path).metadata["tokenizer.ggml.tokens"])
    types = np.asarray(GGUF.open(smollm2_path).metadata["tokenizer.ggml.token_type"]).copy()
    renamed = {3: "<|return|>", 4: "<|call|>", 5: "<|end|>", 6: "<|channel|>", 7: "<|message|>",
               8: "<|eot_id|>", 9: "<|fim_prefix|>", 10: "<|file_sep|>", 11: "<unused_x>", 12: "</s>",
               13: "<|start|>", 14: "<|constrain|>", 15: "<unk>", 16: "<s>"}  # phi-3 rules need <unk> <s> </s>
    for i, text in renamed.items():
        tokens[i] = text
    types[100:110] = 4  # some normal tokens ("ĠĠĠĠ"...) made user-defined: matched in plain text
    types[5] = 1
    path = _variant(smollm2_path, tmp_path / "smollm2-gptoss.gguf",
                    tokenizer__ggml__tokens=((ValueType.ARRAY, ValueType.STRING), tokens),
                    tokenizer__ggml__token_type=((ValueType.ARRAY, ValueType.INT32), types),
                    general__name=((ValueType.STRING,), "Phi-3 mini test"))
    texts = _VARIANT_TEXTS + ["".join(renamed.values()) + " x ", "a <|channel|>  analysis<|message|>  hi <|end|>\n"]
    tk = _check_variant(path, texts, pieces=True)
    assert tk.token_attr(5) == ATTR_USER_DEFINED | ATTR_RSTRIP and not tk.is_eog(5)
    assert tk.is_eog(3) and tk.is_eog(4)


# ------------------------------------------------------------------------------------------------ helpers
_ALPHABET = sorted(set(CORPUS)) + list(" \t\n\r\u00a0\u3000'sSdDtTmMlLrReEvV0123456789<>|_") + [
    "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "</s>", "<b>", "  ", "\n\n", "'s", "'RE",
    "<unused1>", "\u2581", "<0x41>"]


def _random_text(rnd: random.Random) -> str:
    parts = []
    for _ in range(rnd.randint(0, 40)):
        r = rnd.random()
        if r < 0.6:
            parts.append(rnd.choice(_ALPHABET))
        elif r < 0.8:
            parts.append(chr(rnd.randint(0x20, 0x2FFF)))
        elif r < 0.9:
            parts.append(chr(rnd.choice([rnd.randint(0x10000, 0x1FAFF), rnd.randint(0x3000, 0xD7FF),
                                         rnd.randint(0xE000, 0xFFFD)])))
        else:
            a = rnd.randrange(len(CORPUS))
            parts.append(CORPUS[a:a + rnd.randint(1, 30)])
    return "".join(parts)
