"""Tokenizers stored in GGUF files, token-for-token identical to llama.cpp (`src/llama-vocab.cpp`).

Shared formats.md §4. `Tokenizer.from_gguf(gguf)` builds everything from the file's own vocabulary
(no downloads). Two vocabulary types:

* **SPM** (`tokenizer.ggml.model = "llama"`: LLaMA-1/2, Mistral, Gemma 1-3): llama.cpp's
  `llm_tokenizer_spm` is not SentencePiece's Unigram but a *BPE by score*: start from UTF-8 characters,
  repeatedly merge the adjacent pair whose concatenation is a vocabulary token with the highest score (ties:
  leftmost), characters that never became a token fall back to `<0xXX>` byte tokens. It is written here in
  Python, exactly (same heap order, same stale-pair rule). A HuggingFace `BPE` with merges synthesised from
  the scores (HF's `GGUFLlamaConverter` recipe) is only an approximation: equal scores are ordered by merge
  list position instead of leftmost position, a character that is not a token but occurs inside tokens
  becomes unmergeable byte pieces, and Gemma 3 needs ~515k synthetic merges (~1.4 s to build, against
  ~0.3 s for everything here).
* **Byte-level BPE** (`tokenizer.ggml.model = "gpt2"`: LLaMA-3, Qwen, SmolLM, gpt-oss, ...): the text is
  pre-split with the regex list llama.cpp uses for `tokenizer.ggml.pre` (engine.pretokenizer), each piece
  is byte-level encoded (GPT-2 `bytes_to_unicode`) and merged by rank with a HuggingFace
  `tokenizers.Tokenizer` (`models.BPE` built from `tokenizer.ggml.tokens`/`merges`, `ignore_merges` as
  llama.cpp). The pre-split runs in Python's `re` with character classes generated from llama.cpp's own
  Unicode category table (embedded in engine.pretokenizer), because llama.cpp does not use the Unicode
  tables of any regex engine: it either runs hand-written splitters over its table (GPT-2, LLaMA-3, Qwen2
  patterns) or runs std::regex over text where every non-ASCII code point is replaced by its category
  (`\\p{L}` ... are then one byte each). Both amount to "the regex, with \\p{..} and \\s taken from llama.cpp's table", which is
  what the classes here are. If `tokenizers` is missing, or the merges do not fit HF's model (a merge
  whose parts or result are not tokens), a Python BPE with the same rank/leftmost rule is used instead.

Special tokens (llama.cpp `tokenizer_st_partition`): CONTROL, USER_DEFINED and UNKNOWN tokens, longest
first, are cut out of the text before the normal tokenizer runs; with `special=False` CONTROL and UNKNOWN
tokens are not matched (their text is tokenized as plain text) but USER_DEFINED ones still are. Token
attributes are adjusted like llama.cpp's loader does (EOT/EOM/FIM/EOG tokens found by their text become
CONTROL, gpt-oss's `<|channel|>` ... become USER_DEFINED, ...), since that changes both matching and
rendering: e.g. Gemma 3's user-defined `</s>` is an EOG token, hence CONTROL, hence neither matched with
`special=False` nor rendered by `detokenize(special=False)`.

Known differences from llama.cpp (none reachable with the test models):
* `eot_id` when the GGUF has no `eot_token_id` and several EOT-looking tokens exist: llama.cpp takes the first
  in std::unordered_map order, this takes the lowest id (the same pick for SmolLM2's <|endoftext|>/<|im_end|>).
  The EOG set, which is what generation uses, contains all of them either way.
* Two special tokens of equal byte length that overlap in the text: llama.cpp's partition order among them
  is std::sort's (unspecified); here it is by id.
* A "phi-3"-named model lacking `<unk>`, `<s>` or `</s>`: llama.cpp fails to load it; here the rule skips them.
* Input must be a valid `str` (or UTF-8 bytes); llama.cpp's handling of invalid UTF-8 is not reproduced, and
  GGUF token texts that are not UTF-8 are read with U+FFFD replacements (engine.gguf_file).
* The Unicode table is llama.cpp's as vendored in llama-cpp-python 0.3.36; if llama.cpp updates its
  unicode-data.cpp, code points newly assigned in later Unicode versions may split differently until the
  table is regenerated.
* Not implemented: vocab types t5 (UGM), bert (WPM), rwkv, plamo2, hybriddna, whitespace; pre-tokenizers
  kimi-k2, afmoe, tiny_aya/cohere2moe (llama.cpp runs custom C++ splitters for them). They raise
  TokenizerError.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.pretokenizer import (
    _BYTE_TO_UNI,
    _PRE_NAMES,
    _UNI_TO_BYTE,
    _UNSUPPORTED_PRE,
    TokenizerError,
    _byte_encode,
    _compile_regex,
    _encode_unicode_table,
    _pre_regexes,
    _regex_split,
)

try:  # HF tokenizers: the byte-level BPE merge core (optional; a Python BPE gives the same ids)
    import tokenizers as _hf
    from tokenizers import models as _hf_models
except ImportError:  # pragma: no cover - exercised only where tokenizers is not installed
    _hf = None

__all__ = ["Tokenizer", "TokenizerError"]



# llama.h `llama_token_attr`
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

# GGUF `tokenizer.ggml.token_type` -> attribute (llama-vocab.cpp load())
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)
_TYPE_TO_ATTR = np.array([ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED,
                          ATTR_UNUSED, ATTR_BYTE], dtype=np.int32)

_ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale (LSTRIP/RSTRIP)




# ---------------------------------------------------------------------------------------------------------
# token texts llama.cpp's loader recognises (llama-vocab.cpp load(), "auto-detect special tokens by text")
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss hack

_K = "tokenizer.ggml."
_SPECIAL_ID_KEYS = (  # (name, key) in llama.cpp's order; later keys override earlier ones
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
    ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id"),
    ("mask", "mask_token_id"), ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
    ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"),
    ("fim_sep", "fim_sep_token_id"),
    ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"), ("fim_mid", "middle_token_id"),  # deprecated
)

_SPACE = "\u2581"  # ▁, SentencePiece's escaped space


def _as_bool(v: Any) -> bool:
    return bool(v.item() if isinstance(v, np.generic) else v)


class Tokenizer:
    """llama.cpp's tokenizer for one GGUF vocabulary. Build with `Tokenizer.from_gguf(gguf_or_path)`.

    `tokenize(text, add_bos=True, special=False)` = llama_tokenize(text, add_special=add_bos,
    parse_special=special); `detokenize(ids, special=False)` = llama_detokenize(remove_special=False,
    unparse_special=special); `token_to_piece(id, special=False)` = llama_token_to_piece(lstrip=0).
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, gguf: Any) -> "Tokenizer":
        """From an opened `engine.gguf_file.GGUF` (or anything with `.metadata`), a path, or a metadata dict."""
        if isinstance(gguf, dict):
            return cls(gguf)
        if hasattr(gguf, "metadata"):
            return cls(gguf.metadata)
        from engine.gguf_file import GGUF
        return cls(GGUF.open(gguf).metadata)

    def __init__(self, metadata: dict[str, Any]):
        md = metadata
        model = md.get(_K + "model")
        if model is None:
            raise TokenizerError("GGUF has no tokenizer.ggml.model")
        model = str(model)
        self.model = model
        pre_name = str(md.get(_K + "pre", "") or "")
        self.pre = pre_name
        ids: dict[str, int | None] = {n: None for n, _ in _SPECIAL_ID_KEYS}
        self._escape_ws = False
        self._byte_encode = True
        self._ignore_merges = False
        add_bos = add_eos = False
        if model == "llama":
            self.vocab_type = "spm"
            ids.update(bos=1, eos=2, unk=0)
            self.pre_type = "default"
            add_space_prefix, clean_spaces, add_bos = True, False, True
        elif model in ("gpt2", "gemma4"):
            self.vocab_type = "bpe"
            if _K + "merges" not in md:
                raise TokenizerError("cannot find tokenizer merges in model file")
            if model == "gpt2":
                ids.update(bos=11, eos=11)
            else:
                pre_name = "gemma4"
            add_space_prefix, clean_spaces = False, True
            if not pre_name:
                pre_name = "default"  # llama.cpp warns: GENERATION QUALITY WILL BE DEGRADED
            if pre_name in _UNSUPPORTED_PRE:
                raise TokenizerError(f"pre-tokenizer {pre_name!r} needs llama.cpp's custom splitter (not supported)")
            if pre_name not in _PRE_NAMES:
                raise TokenizerError(f"unknown pre-tokenizer type: {pre_name!r}")
            self.pre_type, opts = _PRE_NAMES[pre_name]
            clean_spaces = opts.get("clean_spaces", clean_spaces)
            self._ignore_merges = opts.get("ignore_merges", False)
            add_bos = opts.get("add_bos", add_bos)
            self._escape_ws = opts.get("escape_whitespaces", False)
            self._byte_encode = not self._escape_ws  # gemma4 / sarvam-moe: raw UTF-8 with <0xXX> byte tokens
            if opts.get("no_bos"):
                ids["bos"] = None
        else:
            raise TokenizerError(f"unsupported tokenizer model {model!r} (supported: llama, gpt2, gemma4)")
        if _K + "add_space_prefix" in md:
            add_space_prefix = _as_bool(md[_K + "add_space_prefix"])
        self.add_space_prefix = add_space_prefix
        self.clean_spaces = clean_spaces

        # vocabulary
        tokens = md.get(_K + "tokens")
        if tokens is None or len(tokens) == 0:
            raise TokenizerError("cannot find tokenizer vocab in model file")
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError(f"invalid vocabulary: {_K}tokens must be an array of strings")
        tokens = list(tokens)
        n = len(tokens)
        for key in ("scores", "token_type"):  # per-token arrays: one number per token
            v = md.get(_K + key)
            if isinstance(v, (list, tuple)):  # a metadata dict built by hand
                try:
                    v = np.asarray(v)
                except ValueError:
                    v = None if not v else v
            if v is not None and (not isinstance(v, np.ndarray) or v.dtype.kind not in "iuf" or len(v) != n):
                raise TokenizerError(f"invalid vocabulary: {_K}{key} must be an array of numbers, one for each of "
                                     f"the {n} tokens")
        merges = md.get(_K + "merges")
        if merges is not None and not (isinstance(merges, (list, tuple)) and all(isinstance(m, str) for m in merges)):
            raise TokenizerError(f"invalid vocabulary: {_K}merges must be an array of strings")
        for i, t in enumerate(tokens):
            if not t:
                tokens[i] = f"[EMPTY_{i}]"
        self._tokens: list[str] = tokens
        scores = md.get(_K + "scores")
        self._scores = (np.asarray(scores, dtype=np.float32)[:n] if scores is not None
                        else np.zeros(n, dtype=np.float32))
        self._score_list: list[float] = self._scores.tolist()
        ttypes = md.get(_K + "token_type")
        if ttypes is not None:
            tt = np.asarray(ttypes, dtype=np.int64)[:n]
            attr = np.where((tt >= 0) & (tt < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(tt, 0, 6)], ATTR_UNDEFINED)
        else:
            attr = np.full(n, ATTR_NORMAL)
        self._attr: list[int] = attr.astype(np.int64).tolist()
        self._token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        if len(self._token_to_id) != n:  # llama.cpp lets the last win; a text with two ids is a broken vocab
            i = next(i for i, t in enumerate(tokens) if self._token_to_id[t] != i)
            raise TokenizerError(f"invalid vocabulary: token {tokens[i]!r} appears twice (ids {i} and "
                                 f"{self._token_to_id[tokens[i]]})")
        tok = self._token_to_id

        # special token ids: default (disabled when out of range), then the GGUF keys
        for name, key in _SPECIAL_ID_KEYS:
            if ids[name] is not None and ids[name] >= n:
                ids[name] = None
            v = md.get(_K + key)
            if v is not None and 0 <= int(v) < n:
                ids[name] = int(v)
        if _K + "add_bos_token" in md:
            add_bos = _as_bool(md[_K + "add_bos_token"])
        if _K + "add_eos_token" in md:
            add_eos = _as_bool(md[_K + "add_eos_token"])
        if self.pre_type == "gemma4":
            add_bos = True
        self.add_bos, self.add_eos = add_bos, add_eos

        # auto-detect EOT / EOM / FIM tokens by text (llama.cpp walks an unordered_map: where several
        # candidates exist the pick is hash-order; here the lowest id). They become CONTROL.
        def detect(name: str, texts: Iterable[str]) -> None:
            if ids[name] is not None:
                return
            found = [tok[t] for t in texts if t in tok]
            if found:
                ids[name] = min(found)
                self._attr[ids[name]] |= ATTR_CONTROL

        detect("eot", _EOT_TEXTS)
        detect("eom", _EOM_TEXTS)
        for name, texts in _FIM_TEXTS.items():
            detect(name, texts)

        for i, a in enumerate(self._attr):  # control tokens named "unused..."
            if a & ATTR_CONTROL and "unused" in tokens[i]:
                self._attr[i] |= ATTR_UNUSED

        # end-of-generation set
        eog: set[int] = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep") if ids[k] is not None}
        for t in _EOG_TEXTS:
            if t in tok:
                eog.add(tok[t])
                self._attr[tok[t]] |= ATTR_CONTROL
        for t in _ALWAYS_RENDERED:
            if t in tok:
                self._attr[tok[t]] = ATTR_USER_DEFINED
        for k in ("eos", "eot", "eom"):
            if ids[k] is not None:
                eog.add(ids[k])
        # o200k_harmony / solar-open: with <|return|> and <|call|> (or <|calls|> and <|flush|>), <|end|> is
        # not EOG but a rendered user-defined token
        texts_eog = {tokens[i]: i for i in sorted(eog)}
        has_call = "<|call|>" in texts_eog or "<|calls|>" in texts_eog
        if "<|end|>" in texts_eog and has_call and ("<|return|>" in texts_eog or "<|flush|>" in texts_eog):
            end_id = texts_eog["<|end|>"]
            eog.discard(end_id)
            self._attr[end_id] = ATTR_USER_DEFINED
        if "</s>" in texts_eog and ("<|tool_response>" in texts_eog or "<|plamo:eos|>" in texts_eog):
            eog.discard(texts_eog["</s>"])
            self._attr[texts_eog["</s>"]] = ATTR_NORMAL
        self._eog = frozenset(eog)
        self._ids = ids

        # special-token cache: CONTROL / USER_DEFINED / UNKNOWN, longest (in bytes) first
        special = [i for i, a in enumerate(self._attr) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
        self._special_cache = special
        self._pieces: dict[int, bytes] = {}  # token_to_piece(special=True), built before LSTRIP/RSTRIP below
        self._apply_model_token_attrs(md, pre_name)
        # index of the cache by first two characters (one for 1-char tokens), to skip absent ones fast
        self._special_index: dict[str, list[int]] = {}
        for rank, i in enumerate(special):
            self._special_index.setdefault(tokens[i][:2], []).append(rank)

        # tokenizer model
        self.hf = None  # the HuggingFace tokenizers.Tokenizer doing the BPE merges, when usable
        if self.vocab_type == "bpe":
            self._patterns = [_compile_regex(e) for e in _pre_regexes(self.pre_type)]
            self._init_bpe(list(md[_K + "merges"]))
        self._bpe_cache: dict[str, list[int]] = {}

    def _apply_model_token_attrs(self, md: dict[str, Any], pre_name: str) -> None:
        """llama.cpp's per-model LSTRIP/RSTRIP attributes (end of load())."""
        tok, attr = self._token_to_id, self._attr
        name = str(md.get("general.name", "")).lower()
        arch = str(md.get("general.architecture", ""))
        pre = str(md.get(_K + "pre", ""))

        def set_attr(text: str, bit: int, value: bool) -> None:
            if text in tok:
                i = tok[text]
                attr[i] = (attr[i] | bit) if value else (attr[i] & ~bit)

        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            set_attr("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for i in self._special_cache:
                attr[i] |= ATTR_RSTRIP
            set_attr("</s>", ATTR_RSTRIP, True)
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                set_attr(t, ATTR_RSTRIP, False)
        elif "modern-bert" in name:
            set_attr("[MASK]", ATTR_LSTRIP, True)

    def _init_bpe(self, merges: list[str]) -> None:
        ranks: dict[tuple[str, str], int] = {}
        for i, m in enumerate(merges):
            pos = m.find(" ", 1)
            pair = (m[:pos], m[pos + 1:]) if pos >= 0 else ("", "")
            if pair not in ranks:  # std::map::emplace keeps the first
                ranks[pair] = i
        self._ranks = ranks
        tok = self._token_to_id
        if _hf is None or not self._byte_encode:
            return
        ordered = sorted(ranks.items(), key=lambda kv: kv[1])
        if not all(a in tok and b in tok and (a + b) in tok for (a, b), _ in ordered):
            return  # merges HF's BPE cannot hold: the Python BPE reproduces llama.cpp instead
        # byte characters without a token (e.g. 0xC0, 0xF5..0xFF, some controls): llama.cpp keeps such a
        # character as an unmergeable symbol and then drops it, HF would drop it first and merge its
        # neighbours; fragments containing one go to the Python BPE
        missing = "".join(u for u in _BYTE_TO_UNI.values() if u not in tok)
        self._hf_unsafe = re.compile("[" + re.escape(missing) + "]") if missing else None
        model = _hf_models.BPE(vocab=tok, merges=[p for p, _ in ordered], fuse_unk=False, byte_fallback=False,
                               ignore_merges=self._ignore_merges)
        self.hf = _hf.Tokenizer(model)

    # ------------------------------------------------------------------ properties
    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    bos_id = property(lambda self: self._ids["bos"], doc="BOS id (None if the model has none)")
    eos_id = property(lambda self: self._ids["eos"])
    eot_id = property(lambda self: self._ids["eot"])
    eom_id = property(lambda self: self._ids["eom"])
    unk_id = property(lambda self: self._ids["unk"])
    sep_id = property(lambda self: self._ids["sep"])
    pad_id = property(lambda self: self._ids["pad"])
    mask_id = property(lambda self: self._ids["mask"])

    def special_id(self, name: str) -> int | None:
        """bos, eos, eot, eom, unk, sep, pad, mask, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep."""
        return self._ids[name]

    @property
    def eog_ids(self) -> frozenset[int]:
        return self._eog

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    @property
    def tokens(self) -> list[str]:
        """All token texts by id, as stored in the GGUF (empty ones as llama.cpp's "[EMPTY_<id>]")."""
        return self._tokens

    @property
    def bos_text(self) -> str | None:
        return None if self._ids["bos"] is None else self._tokens[self._ids["bos"]]

    @property
    def eos_text(self) -> str | None:
        return None if self._ids["eos"] is None else self._tokens[self._ids["eos"]]

    def token_text(self, token_id: int) -> str:
        """The token's text as stored in the GGUF (byte-level form for BPE, ▁ for SPM spaces)."""
        return self._tokens[token_id]

    def token_attr(self, token_id: int) -> int:
        """llama.cpp's llama_token_attr bits for the token (after the loader's adjustments)."""
        return self._attr[token_id]

    def token_score(self, token_id: int) -> float:
        return float(self._scores[token_id])

    def is_control(self, token_id: int) -> bool:
        return bool(self._attr[token_id] & ATTR_CONTROL)

    def token_to_id(self, text: str) -> int | None:
        return self._token_to_id.get(text)

    # ------------------------------------------------------------------ tokenize
    def tokenize(self, text: str | bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """llama_tokenize: `add_bos` is llama.cpp's add_special (adds BOS, and EOS, only where the model's
        metadata says so); `special` is parse_special (match CONTROL tokens' text)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8")
        frags = self._partition(text, special) if text else []
        out: list[int] = []
        if add_bos and self.add_bos:
            if self._ids["bos"] is None:
                raise TokenizerError("model adds BOS but has no BOS token")
            out.append(self._ids["bos"])
        if self.vocab_type == "spm":
            prev_special = True  # prefix with space if first fragment
            for f in frags:
                if isinstance(f, str):
                    if self.add_space_prefix and prev_special:
                        f = " " + f
                    self._spm(f.replace(" ", _SPACE), out)
                    prev_special = False
                else:
                    out.append(f)
                    prev_special = True
        else:
            for f in frags:
                if isinstance(f, str):
                    self._bpe(f.replace(" ", _SPACE) if self._escape_ws else f, out)
                else:
                    out.append(f)
        if add_bos and self.add_eos:
            if self._ids["eos"] is None:
                raise TokenizerError("model adds EOS but has no EOS token")
            out.append(self._ids["eos"])
        return out

    encode = tokenize

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """llama.cpp tokenizer_st_partition: cut special tokens (longest first) out of the raw text."""
        index, tokens, attrs, cache = self._special_index, self._tokens, self._attr, self._special_cache
        ranks: set[int] = set()
        for k in {text[i:i + 2] for i in range(len(text))}:  # 2-char windows and the last char
            r = index.get(k)
            if r:
                ranks.update(r)
            if len(k) == 2:
                r = index.get(k[0])
                if r:
                    ranks.update(r)
        frags: list[str | int] = [text]
        for rank in sorted(ranks):
            tid = cache[rank]
            a = attrs[tid]
            if not parse_special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            t = tokens[tid]
            if t not in text:
                continue
            new: list[str | int] = []
            for f in frags:
                if not isinstance(f, str) or t not in f:
                    new.append(f)
                    continue
                pos = 0
                while True:
                    m = f.find(t, pos)
                    if m < 0:
                        break
                    left = f[pos:m]
                    if a & ATTR_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = m + len(t)
                    if a & ATTR_RSTRIP:
                        while pos < len(f) and f[pos] in _C_SPACE:
                            pos += 1
                if pos < len(f):
                    new.append(f[pos:])
            frags = new
        return frags

    def _byte_token(self, b: int) -> int:
        """SPM byte fallback (llama_vocab::byte_to_token): <0xXX>, else the 1-byte token itself."""
        tok = self._token_to_id
        t = tok.get(f"<0x{b:02X}>")
        if t is None:
            t = tok.get(chr(b)) if b < 0x80 else None
            if t is None:
                raise TokenizerError(f"vocabulary has no byte token for 0x{b:02X}")
        return t

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on one fragment (spaces already escaped to ▁)."""
        n = len(text)
        if n == 0:
            return
        tok, scores = self._token_to_id, self._score_list
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []
        push = heapq.heappush
        get = tok.get
        for i in range(n - 1):
            t = get(text[i:i + 2])
            if t is not None:
                heap.append((-scores[t], i, i + 1, 2))  # max score first, then leftmost
        heapq.heapify(heap)
        pop = heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            ln, rn = length[left], length[right]
            if ln == 0 or rn == 0 or ln + rn != size:
                continue
            length[left] = size
            length[right] = 0
            r = nxt[right]
            nxt[left] = r
            if r >= 0:
                prev[r] = left
            p = prev[left]
            if p >= 0:
                s = length[p] + size
                t = get(text[p:p + s])
                if t is not None:
                    push(heap, (-scores[t], p, left, s))
            if r >= 0:
                s = size + length[r]
                t = get(text[left:left + s])
                if t is not None:
                    push(heap, (-scores[t], left, r, s))
        i = 0
        while i != -1:
            piece = text[i:i + length[i]]
            t = get(piece)
            if t is not None:
                out.append(t)
            else:
                out.extend(self._byte_token(b) for b in piece.encode("utf-8"))
            i = nxt[i]

    def _bpe(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_bpe_session::tokenize on one fragment."""
        words = _regex_split(text, self._patterns)
        if self._byte_encode:
            words = [_byte_encode(w) for w in words]
        if self.hf is not None and (self._hf_unsafe is None or not any(map(self._hf_unsafe.search, words))):
            if words:
                out.extend(self.hf.encode(words, is_pretokenized=True, add_special_tokens=False).ids)
            return
        cache = self._bpe_cache
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = self._bpe_word(w)
                if len(cache) > 200_000:
                    cache.clear()
                cache[w] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        tok, ranks = self._token_to_id, self._ranks
        if self._ignore_merges and word in tok:
            return [tok[word]]
        if self.pre_type == "gemma4" and not word.strip("\n") and word in tok:
            return [tok[word]]
        texts = list(word)
        n = len(texts)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap = []
        for i in range(n - 1):
            r = ranks.get((texts[i], texts[i + 1]))
            if r is not None:
                heap.append((r, i, i + 1, texts[i] + texts[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            lt, rt = texts[left], texts[right]
            if not lt or not rt or lt + rt != merged:
                continue
            texts[left], texts[right] = merged, ""
            r = nxt[right]
            nxt[left] = r
            if r >= 0:
                prev[r] = left
            p = prev[left]
            if p >= 0:
                k = ranks.get((texts[p], merged))
                if k is not None:
                    heapq.heappush(heap, (k, p, left, texts[p] + merged))
            if r >= 0:
                k = ranks.get((merged, texts[r]))
                if k is not None:
                    heapq.heappush(heap, (k, left, r, merged + texts[r]))
        out: list[int] = []
        for t in texts:
            if not t:
                continue
            i = tok.get(t)
            if i is not None:
                out.append(i)
            elif self._byte_encode:  # llama.cpp looks each UTF-8 byte up as a 1-byte string
                out.extend(tok[chr(b)] for b in t.encode("utf-8") if b < 0x80 and chr(b) in tok)
            else:
                out.extend(tok[h] for b in t.encode("utf-8") if (h := f"<0x{b:02X}>") in tok)
        return out

    # ------------------------------------------------------------------ detokenize
    def _piece(self, token_id: int) -> bytes:
        """llama.cpp's cached token_to_piece(special=true) for one token."""
        p = self._pieces.get(token_id)
        if p is not None:
            return p
        text, a = self._tokens[token_id], self._attr[token_id]
        if a & (_ATTR_SPECIAL | ATTR_USER_DEFINED):
            p = text.encode("utf-8")
        elif a & ATTR_NORMAL:
            if self.vocab_type == "spm" or self._escape_ws:
                p = text.replace(_SPACE, " ").encode("utf-8")
            else:
                p = self._decode_byte_level(text)
        elif a & ATTR_BYTE:
            try:
                p = bytes([int(text[3:5], 16) & 0xFF])
            except ValueError:
                p = b"\x00"
        else:
            p = b""
        self._pieces[token_id] = p
        return p

    @staticmethod
    def _decode_byte_level(text: str) -> bytes:
        """llama_decode_text: byte-level characters back to bytes (unknown ones rendered as llama.cpp does)."""
        out = bytearray()
        for ch in text:
            b = _UNI_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)

    def token_to_piece(self, token_id: int, special: bool = False, lstrip: int = 0) -> bytes:
        """llama_token_to_piece: the raw bytes of one token (CONTROL/UNKNOWN tokens only with special=True;
        a byte token gives one byte, so a multi-byte character can span several tokens)."""
        if not 0 <= token_id < len(self._tokens):
            raise IndexError(f"token id {token_id} out of range (n_vocab {len(self._tokens)})")
        if not special and self._attr[token_id] & _ATTR_SPECIAL:
            return b""
        p = self._piece(token_id)
        k = 0
        while k < lstrip and k < len(p) and p[k] == 0x20:
            k += 1
        return p[k:] if k else p

    def detokenize_bytes(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> bytes:
        """llama_detokenize(remove_special, unparse_special=special) as bytes."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self._ids["bos"]:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self._ids["eos"]:
            ids = ids[:-1]
        parts = []
        for t in ids:
            parts.append(self.token_to_piece(int(t), special, 1 if remove_space else 0))
            remove_space = False
        text = b"".join(parts)
        if self.clean_spaces and text:
            text = _clean_spaces(text)
        return text

    def detokenize(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> str:
        """llama_detokenize as text (invalid UTF-8, e.g. a cut multi-byte character, becomes U+FFFD)."""
        return self.detokenize_bytes(ids, special, remove_special).decode("utf-8", errors="replace")

    decode = detokenize

    def __repr__(self) -> str:
        return (f"Tokenizer({self.model}/{self.pre_type}, n_vocab={self.n_vocab}, bos={self.bos_id}, "
                f"eos={self.eos_id}, add_bos={self.add_bos}, hf={'yes' if self.hf is not None else 'no'})")


def _clean_spaces(data: bytes) -> bytes:
    """The three clean_spaces passes of llama_vocab::impl::detokenize, ported literally (in place)."""
    text = bytearray(data)
    total = len(text)
    sp, ap = 0x20, 0x27
    # first pass: " ?", " !", " .", " ,"
    total1, total = total, 1 if total else 0
    for i in range(1, total1):
        x = text[i]
        if text[i - 1] == sp and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    # second pass: strip single apostrophe between spaces
    total2, total = total, 1 if total else 0
    i = 1
    while i < total2:
        x = text[i]
        if x == ap and i + 1 < total2 and text[i - 1] == sp and text[i + 1] == sp:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    # third pass: apostrophe contractions " 's", " 'm", " 're", " 've"
    total3, total = total, 1 if total else 0
    for i in range(1, total3):
        x = text[i]
        if text[i - 1] == sp and x == ap and i + 1 < total3:
            x1 = text[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < total3:
                x2 = text[i + 2]
                if (x1 == 0x72 and x2 == 0x65) or (x1 == 0x76 and x2 == 0x65):  # "re", "ve"
                    total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    import time
    ap = argparse.ArgumentParser(prog="python -m engine.tokenizer", description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", help="GGUF file: tokenize TEXT (or stdin)")
    ap.add_argument("text", nargs="?")
    ap.add_argument("--special", action="store_true", help="parse special tokens")
    ap.add_argument("--no-bos", action="store_true")
    ap.add_argument("--unicode-table", metavar="UNICODE_DATA_CPP", help="print _UNICODE_TABLE for this file")
    args = ap.parse_args(argv)
    if args.unicode_table:
        print(_encode_unicode_table(args.unicode_table))
        return 0
    if not args.model:
        ap.error("model required")
    t0 = time.perf_counter()
    tk = Tokenizer.from_gguf(args.model)
    t1 = time.perf_counter()
    text = args.text if args.text is not None else sys.stdin.read()
    ids = tk.tokenize(text, add_bos=not args.no_bos, special=args.special)
    print(f"{tk!r} built in {t1 - t0:.3f}s", file=sys.stderr)
    print(ids)
    print([tk.token_to_piece(i, special=True) for i in ids])
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
