"""The pre-tokenizer of llama.cpp's byte-level BPE vocabularies: the regex lists and the Unicode classes they use.

Split out of engine.tokenizer (the vocabularies, the merges, the special-token rules) because it is mostly data:
llama.cpp's Unicode category table, a translator from llama.cpp's regex dialect (`\\p{L}`, `\\s`, ... taken
from that table) to Python's `re`, the GPT-2 byte-level alphabet, and the regex list for every
`tokenizer.ggml.pre` name llama.cpp knows. `Tokenizer` picks a list with `_pre_regexes(pre_type)`, splits
text with `_regex_split` and byte-encodes each piece with `_byte_encode`.
"""

from __future__ import annotations

import base64
import re
import warnings
import zlib
from collections.abc import Sequence
from functools import lru_cache


class TokenizerError(ValueError):
    """A GGUF vocabulary this engine cannot tokenize (unknown model / pre-tokenizer, missing keys).

    Defined here, beside the first code that raises it; engine.tokenizer exports it."""

# ---------------------------------------------------------------------------------------------------------
# Unicode categories exactly as llama.cpp's src/unicode-data.cpp (`unicode_ranges_flags`), so that the
# pre-tokenizer agrees with llama.cpp whatever Unicode version Python's own tables have. Encoding: zlib +
# base85 of varints, one per run of code points with the same class, value = (start - previous start) * 6
# + class, class 0 other, 1 N (number), 2 L (letter), 3 M (mark), 4 P (punctuation), 5 S (symbol).
# Regenerate with `python -m engine.tokenizer --unicode-table path/to/llama.cpp/src/unicode-data.cpp`.
_UNICODE_TABLE = (
    "c-n1N4{#LK8SnS@^7ebXZ{OZ7dv}|?KU|XI0?R>;%O3(Rmjn@GYEoJP)>OrcqP2|7&^o2GRt*7^KLHV`3RDc1X|V&931DNj5@Xa%"
    "Cs3w3QLI{2=+x3WtwU+Yp?w#yQ)is-=Iz_J-+RCB``-8czWdS$#Iz||d9xK2d*oEdJ)mnkJpp>9F62Znw@|ZG)YK?$0sIZ%v542c"
    "xGJZk{;j^UD&!)8G$}N+k>V=+r-H9gmis`(4?t+ye*?E{wv8~2g{9C!A9xA=?Wm<$=6tF-YstOMo{4XSkoh{xnilhnVoYeAg5go<"
    "1MygB9$i#?4H_-Yp{6d@gU1?~!&2ccd<^U`#kuK605h`+|ADQ*UWHeP!|r0arm)eBOKr>xE_wicq>gJ!5R;n@t)(8v2setBF-2&M"
    "nl@&<%X+*dCS|EOH|+?`xk#rriHJs<Y;2HDURFxU!}82#wxBnd+-TNmj%C>Y;ayTG;n~ydOK>fyW}0M_GLDU|!{v-S+_9b3cq(Eu"
    "SI}y@Xkor0otH2h0B<hsmk{nWjuJ*lm|(hEgDi@dHG)eRmvpimOB!g>FMB0J{{>?Flc!TJqUI$2_poH)a%U?@PpI%CG@fCU<tGJZ"
    "n6~XDX!=Q<R;M=e_n>553Z*8+CNvwVNFimu8VGj~^ym^zk64rLVY(D8F7h}A@gFi#F_(>jUaM#Ha8*JcvX-n?o3qtk++mKHi+Epc"
    "V`@`Ud>~IvQ?ZWVsEMwScO%F1ActZ2-+LFnLF8kbVn%1Ka&8N<Jt2_^<L0D>%Vd&rXIPow<Z~<B#=E1uaRqPdK%4Ql=g1H^S_~OA"
    "f=R*Tt8AtQ*&U%=g*aY9eM%_~0Beo6CTY|t_Jc^xdw_VmVA9;!C~SsQSR5k(I{>Cy+MUxf<^cShq<51$@)MeCny#45nR65t7{!gG"
    "v(7sOtD+MFXF~C95DmF*BBJ@)D7z2hSdB8x(rZ|^(qo8>^jHpg=~qbxK)gV(26dSRHI6GXy0g$0a?bDE3U&8r3$@nUks4E?LT!n1"
    "?1&A+jl-}+=$<ZG<gTi$tUW17yjmpFRi3W)6QhbJe{UrZf%PYSC(OO~9C=-N5I#vP`W5Ua)(g;b-hL1+lH?FrLzeX-=odooYuUKN"
    "E6cUd?&Ac>Y4kdoSB*Y?PS_CaBHGIkZv7qX0)0oQy+?ZzZkACtw3cwYI%_gk8BSQ|*b_1>5yd?rbkp4g`$M{sEWQk5a5dgG0BXx&"
    "s8^R9gO-nANw>N7FzHrCdoeab8XqO%BzL}9<g0g+1Z&3ULHtx{3TNs!!4=|fA#tCQ9?!^auoNR0$IVa`rxT{Q*<Ta4RvaYD>x`iK"
    "uE~yurdoU&>cnQ~n2!e_;_W71??5$3hzgujOv$R~Y>Z&7ER?Xf1!P_xBq)<pR7k?1+aM~gsuU4k%*gx7jK^U;!RxtqxU7!JJ=w91"
    "p|%a+?IVwGQnp*-)6g04+fr$UE!ZLJg^tt5=CWnCth20J?o-4NsiA|=9=|oHzV#$%*K4}1=^FP^xSuAzh<UZ#j*v5sF6@}E`wO{f"
    "#a)0a<+)v=a}-XORodmfBsTLDx!tn$ju?G{JVa<OJpj%=a-%8<_87R0-^Up=eHK#be$ZrfdUa~*BJ`^z7r>LhkD>4^nU8a^Yn-bt"
    "KesC*qOk{x`E8KFPbE$4Q8I$!14J?v6&pZP3tPa*4Zw_sJ|az;m|hE+sI;$=b}J`HxiD@vb`VKAyux!O2gyRR<7&h7hTK62<3X?o"
    "p&p+GUS8=p4v}cC2aLkXiG}6U-D~{Q$`R$a<PceKh)m6%0(VC6p)ml`3Kph<zpOY1p-2ns;mSm69jr*WXW(9c^#+*b93waR<wpTc"
    "L1%dnk@;MU(*-+VYEbQ*f=;#BV}cf52Tgu<_L9Ykc!C*44K-U`HE+3WBG<}drRT{w?Z_}R)9h~2Ix(nrKS$<FTq5%lOQ$Qi=|@sS"
    "^ccA-F|nCz4DBPZm#hvWoe`W-cN5>7y$RxcR4(4>&?|$<9p7C`7HD)*FiiTu>?*%DhW;3CBsbBwLiZ~x+wzj&^AhJ_$S`ht3|ZKo"
    "8SGQ?;vD#9PLqW86tLnyAjcB5w7};5nB3}UsRc)r>A|qxfPaKMD`=@X2V@HOgV_VD^I4^2_*uwADB~>0q-oiVTzLsn@;yzb2E*d+"
    "1fM1|zXOkhAF2FGur5Tuu?7yn*KpU=4?~ZaX{mXSvXLK*g!qCzg{4^Cb@4gaA0OMUyy3|#D3#S)iX>QxSV@a}$@D5Oq0>2m>f?{n"
    "EBn&-E4|>p7aCOJ$VSLCucKQDOHZ!ii%&d33O%zgLc?GB6n8wrCyg8EFG0q4v0Hf6etda%S-Qh%$OV?X|Cio|?Zn&wS3FyGjtuE7"
    "e+KI#QWeS6)|)j)A^BIb2DT_M`iHVr*Q{#a5SqCIenBrPxL=WfPh|247hC1+`nXP!EhR4}Ka-87RIiSY7fi7eaOe1cn=c&m#xrD%"
    "dz{3dA+`E-dN_4siglf?9e`}+e$8jgOkajGmHvdh2DGoNmqc>D5y-CFZ5{=B$3{{fRMFFsr=dJJQ|U`sS;+VkX3X+0z)mGc%Yy_z"
    "n>kC=nCiZ!JWSNCUglySNIfcRFOWNA*T_=uQunYguYV?`w^9JzalHVSrETfhvgZkZlRrR`W1;pgt4r_F-+?&`ht=1~0az%P8*2FV"
    "nJ3k))04|$9kG$J<UnYO?1@WSlP5@hFy&*Y?+1&&sa!DIJFSjbL(O)g`}Li2Uqj8`sXjv9g<xO)#gpbBygdlneobuZC5!jHLvGlf"
    "9Q{sz`RM$?vygsq2;P6UhwRb+3qCIcKL")
# unicode-data.cpp `unicode_set_whitespace` (= the Unicode White_Space property)
_WHITESPACE = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
               0x202F, 0x205F, 0x3000)
_CLASS_NAMES = ("", "N", "L", "M", "P", "S")


def _encode_unicode_table(unicode_data_cpp: str) -> str:
    """The `_UNICODE_TABLE` text for a llama.cpp `src/unicode-data.cpp` (maintenance helper)."""
    src = open(unicode_data_cpp, encoding="utf-8").read()
    i = src.index("unicode_ranges_flags = {")
    pairs = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-Fa-f]+), 0x([0-9A-Fa-f]+)\}",
                                                               src[i:src.index("};", i)])]
    bits = ((0x02, 1), (0x04, 2), (0x10, 3), (0x20, 4), (0x40, 5))  # NUMBER LETTER ACCENT_MARK PUNCT SYMBOL
    runs: list[tuple[int, int]] = []
    for (start, flags), _ in zip(pairs, pairs[1:]):
        cls = next((c for bit, c in bits if flags & bit), 0)
        if not runs or runs[-1][1] != cls:
            runs.append((start, cls))
    out, prev = bytearray(), 0
    for start, cls in runs:
        v, prev = (start - prev) * 6 + cls, start
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                break
    text = base64.b85encode(zlib.compress(bytes(out), 9)).decode()
    return "\n".join(f'    "{text[k:k + 100]}"' for k in range(0, len(text), 100))


@lru_cache(maxsize=None)
def _unicode_classes() -> dict[str, str]:
    """Regex character-class bodies (no brackets) for N, L, M, P, S and whitespace, from llama.cpp's table."""
    data = zlib.decompress(base64.b85decode("".join(_UNICODE_TABLE)))
    starts, classes, v, shift, pos = [], [], 0, 0, 0
    for b in data:
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            pos += v // 6
            starts.append(pos)
            classes.append(v % 6)
            v = shift = 0
    starts.append(0x110000)
    ranges: dict[str, list[tuple[int, int]]] = {n: [] for n in _CLASS_NAMES[1:]}
    for k, cls in enumerate(classes):
        if cls:
            ranges[_CLASS_NAMES[cls]].append((starts[k], starts[k + 1] - 1))

    def esc(c: int) -> str:
        return f"\\U{c:08x}" if c > 0xFFFF else f"\\u{c:04x}"

    def body(rs) -> str:
        return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in rs)

    out = {name: body(rs) for name, rs in ranges.items()}
    out["s"] = body((c, c) for c in _WHITESPACE)
    return out


# \p{..} names llama.cpp understands (unicode_regex_split k_ucat_enum: all L* subcategories mean LETTER)
_UCAT = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}


def _translate_regex(expr: str) -> str:
    """A llama.cpp pre-tokenizer regex as a Python `re` pattern with llama.cpp's character classes.

    `\\p{X}` and `\\s`/`\\S` become explicit classes from llama.cpp's table; `$` (ECMAScript: end of input)
    becomes `\\Z`; the rest is the same syntax in ECMAScript and Python (compiled with re.ASCII so `\\d`,
    `\\w`, `\\b` stay ASCII like std::regex in the C locale)."""
    cls = _unicode_classes()
    out: list[str] = []
    i, n, in_class = 0, len(expr), False
    while i < n:
        c = expr[i]
        if c == "\\" and i + 1 < n:
            d = expr[i + 1]
            if d == "p" and expr.startswith("{", i + 2):
                j = expr.index("}", i + 3)
                name = expr[i + 3:j]
                if name not in _UCAT:
                    raise TokenizerError(f"unsupported unicode category \\p{{{name}}} in pre-tokenizer regex")
                b = cls[_UCAT[name]]
                out.append(b if in_class else f"[{b}]")
                i = j + 1
                continue
            if d == "s":
                out.append(cls["s"] if in_class else f"[{cls['s']}]")
                i += 2
                continue
            if d == "S":
                if in_class:
                    raise TokenizerError("\\S inside a character class is not supported")
                out.append(f"[^{cls['s']}]")
                i += 2
                continue
            out.append(expr[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if expr.startswith("^", i + 1):
                out.append("^")
                i += 1
        elif c == "$":
            out.append(r"\Z")
        else:
            out.append(c)
        i += 1
    return "".join(out)


@lru_cache(maxsize=None)
def _compile_regex(expr: str) -> re.Pattern:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set" etc. in copied patterns
        return re.compile(_translate_regex(expr), re.ASCII)


def _regex_split(text: str, patterns: Sequence[re.Pattern]) -> list[str]:
    """llama.cpp unicode_regex_split: each regex splits every piece left by the previous one into its
    matches and the gaps between them (nothing is dropped)."""
    pieces = [text]
    for pat in patterns:
        nxt: list[str] = []
        append = nxt.append
        for piece in pieces:
            pos = 0
            for m in pat.finditer(piece):
                a, b = m.span()
                if a > pos:
                    append(piece[pos:a])
                if b > a:
                    append(piece[a:b])
                pos = b
            if pos < len(piece):
                append(piece[pos:])
        pieces = nxt
    return pieces


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (llama.cpp unicode_byte_to_utf8_map)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


_BYTE_TO_UNI = _bytes_to_unicode()
_UNI_TO_BYTE = {u: b for b, u in _BYTE_TO_UNI.items()}
_BYTE_ENCODE_TABLE = str.maketrans({chr(b): u for b, u in _BYTE_TO_UNI.items()})


def _byte_encode(word: str) -> str:
    """UTF-8 bytes of `word`, each shown as its GPT-2 byte-level character."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE_TABLE)


# ---------------------------------------------------------------------------------------------------------
# Pre-tokenizer regex lists, verbatim from llama-vocab.cpp `llm_tokenizer_bpe` (the "adapted" forms llama.cpp
# actually runs; non-ASCII literals written as \u escapes). Keys: llama.cpp LLAMA_VOCAB_PRE_TYPE_* names.
# Not supported (llama.cpp uses custom C++ splitters for them): kimi-k2, afmoe, tiny_aya/cohere2moe.
_PRE_REGEXES = {
    ("llama3",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("jais2",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}""",
    ],
    ("dbrx", "smaug"): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("deepseek_llm",): [
        r"""[\r\n]""",
        r"""\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+""",
        r"""\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+""",
        r"""\s+$""",
        r"""[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+""",
        r"""\p{N}+""",
    ],
    ("deepseek3_llm", "hunyuan_dense", "joyai_llm", "hy_v4"): [
        r"""\p{N}{1,3}""",
        r"""[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+""",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("spark2_5",): [
        r"""\p{N}{1,3}""",
        r"""[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+""",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+""",
        r"""\p{N}""",
    ],
    ("youtu",): [
        r"""[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("deepseek_coder",): [
        r"""[\r\n]""",
        r"""\s?\p{L}+""",
        r"""\s?\p{P}+""",
        r"""[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+""",
        r"""\p{N}""",
    ],
    ("falcon",): [
        r"""[\p{P}\$\+<=>\^~\|`]+""",
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
        r"""[0-9][0-9][0-9]""",
    ],
    ("starcoder", "refact", "command_r", "smollm", "codeshell", "exaone", "minerva", "mellum2"): [
        r"""\p{N}""",
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
    ],
    ("gpt2", "mpt", "olmo", "jais", "trillion", "granite_docling"): [
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
    ],
    ("stablelm2", "qwen2", "hunyuan", "solar_open"): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("qwen35",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("poro", "bloom", "gpt3_finnish"): [
        r""" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+""",
    ],
    ("chatglm4",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("viking",): [
        r""" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+""",
        r"""\p{N}""",
    ],
    ("tekken",): [
        r"""[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("chameleon",): [
        r"""<sentinel:[0-9]+>""",
        r"""(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z""",
        r"""([\t\n]|    |  )""",
        r"""\p{N}""",
        r"""[\p{P}!-/:-@\[-`{-~]""",
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
    ],
    ("gpt4o", "minimax_m2"): [
        r"""[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("granite_emb_multi",): [
        r"""[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("superbpe",): [
        r"""\p{N}+""",
        r"""(?=(\d{3})+(?!\d))""",
    ],
    ("bailingmoe",): [
        r"""'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    ],
    ("seed_coder",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("ufakzeka",): [
        r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("grok_2",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("laguna",): [
        r"""[^\n]+|[\n]+""",
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("exaone_moe",): [
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+""",
    ],
    ("gemma4",): [
        r"""[^\n]+|[\n]+""",
    ],
    ("sarvam_moe",): [
        r"""[^\n]+|[\n]+""",
    ],
    ("minicpm5",): [
        r"""\p{N}{1,3}""",
        r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    ],
    ("whitespace",): [
        r"""\S+""",
    ],
    ("default",): [
        r"""[\p{P}\$\+<=>\^~\|]+""",
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
        r"""\p{N}+""",
        r"""[0-9][0-9][0-9]""",
    ],
}

# tokenizer.ggml.pre -> (pre type, options) per llama-vocab.cpp load(); options: clean_spaces=False,
# ignore_merges=True, add_bos=True (default before the GGUF key), no_bos (special_bos_id = NULL),
# escape_whitespaces=True (SPM-style BPE: spaces as ▁, raw UTF-8 pieces, <0xXX> byte fallback).
_PRE_NAMES: dict[str, tuple[str, dict[str, bool]]] = {}


def _pre(names: str, pre_type: str, **opts: bool) -> None:
    for name in names.split():
        _PRE_NAMES[name] = (pre_type, opts)


_NC = {"clean_spaces": False}
_pre("default", "default")
_pre("minicpm5", "minicpm5", ignore_merges=True)
_pre("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", "llama3",
     ignore_merges=True, add_bos=True)
_pre("deepseek-llm", "deepseek_llm", **_NC)
_pre("deepseek-coder", "deepseek_coder", **_NC)
_pre("deepseek-v3", "deepseek3_llm", **_NC)
_pre("spark2_5", "spark2_5", **_NC)
_pre("youtu", "youtu", ignore_merges=True, **_NC)
_pre("falcon", "falcon")
_pre("mpt", "mpt")
_pre("starcoder", "starcoder")
_pre("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert exaone4", "gpt2")
_pre("jais-2", "jais2")
_pre("gemma4 granite-embed-multi-311m", "gemma4", escape_whitespaces=True)
_pre("sarvam-moe", "sarvam_moe", escape_whitespaces=True, **_NC)
_pre("jina-v1-en jina-v2-code roberta-bpe", "gpt2")
_pre("refact", "refact")
_pre("command-r", "command_r", **_NC)
_pre("qwen2 deepseek-r1-qwen kormo f2llmv2", "qwen2", **_NC)
_pre("qwen35", "qwen35", **_NC)
_pre("stablelm2", "stablelm2")
_pre("olmo", "olmo")
_pre("dbrx", "dbrx")
_pre("smaug-bpe", "smaug")
_pre("poro-chat", "poro", **_NC)
_pre("chatglm-bpe", "chatglm4", no_bos=True)
_pre("glm4 glm5", "chatglm4", no_bos=True, ignore_merges=True)
_pre("viking", "viking", **_NC)
_pre("jais", "jais")
_pre("tekken", "tekken", ignore_merges=True, add_bos=True, **_NC)
_pre("smollm", "smollm", **_NC)
_pre("codeshell", "codeshell")
_pre("bloom", "bloom")
_pre("gpt3-finnish", "gpt3_finnish")
_pre("exaone", "exaone")
_pre("exaone-moe", "exaone_moe")
_pre("chameleon", "chameleon", add_bos=True, **_NC)
_pre("minerva-7b", "minerva")
_pre("megrez", "qwen2")
_pre("gpt-4o llama4 kanana2 talkie", "gpt4o", **_NC)
_pre("granite-embed-multi-97m", "granite_emb_multi", ignore_merges=True, **_NC)
_pre("superbpe", "superbpe", **_NC)
_pre("trillion", "trillion", **_NC)
_pre("granite-docling", "granite_docling", **_NC)
_pre("bailingmoe bailingmoe2 llada-moe", "bailingmoe", **_NC)
_pre("seed-coder", "seed_coder", **_NC)
_pre("hunyuan", "hunyuan", **_NC)
_pre("hunyuan-dense", "hunyuan_dense", **_NC)
_pre("hy_v4", "hy_v4", **_NC)
_pre("joyai-llm", "joyai_llm", **_NC)
_pre("ufakzeka", "ufakzeka", **_NC)
_pre("grok-2", "grok_2", **_NC)
_pre("laguna", "laguna", **_NC)
_pre("minimax-m2", "minimax_m2", **_NC)
_pre("solar-open", "solar_open", **_NC)
_pre("mellum2", "mellum2")
_UNSUPPORTED_PRE = {"kimi-k2", "afmoe", "tiny_aya", "cohere2moe", "whitespace"}


def _pre_regexes(pre_type: str) -> list[str]:
    for key, exprs in _PRE_REGEXES.items():
        if pre_type in key:
            return exprs
    raise TokenizerError(f"no regex list for pre-tokenizer type {pre_type!r}")
