"""llama.cpp's flags for its other samplers and for constrained output, shared by generate and run.

Samplers: --dry-multiplier/--dry-base/--dry-allowed-length/--dry-penalty-last-n/--dry-sequence-breaker,
--xtc-probability/--xtc-threshold, --top-nsigma, --mirostat/--mirostat-lr/--mirostat-ent,
--dynatemp-range/--dynatemp-exp, --samplers/--sampling-seq. Output: --grammar, --grammar-file,
-j/--json-schema, -jf/--json-schema-file (GBNF and JSON schema, as llama-cli takes them).
"""

from __future__ import annotations

import json
import sys


def add_sampler_args(p):
    g = p.add_argument_group("more samplers (llama.cpp's)")
    g.add_argument("--dry-multiplier", type=float, default=None, help="DRY repetition penalty strength (0: off)")
    g.add_argument("--dry-base", type=float, default=None, help="DRY base (default 1.75)")
    g.add_argument("--dry-allowed-length", type=int, default=None, help="DRY: repeats this long go unpenalised (2)")
    g.add_argument("--dry-penalty-last-n", type=int, default=None, help="DRY window (-1: context, 0: off; 64)")
    g.add_argument("--dry-sequence-breaker", action="append", default=None,
                   help="DRY sequence breaker, repeatable, replaces the defaults ('none': no breakers)")
    g.add_argument("--xtc-probability", type=float, default=None, help="XTC probability (0: off)")
    g.add_argument("--xtc-threshold", type=float, default=None, help="XTC threshold (0.1; > 0.5: off)")
    g.add_argument("--top-nsigma", "--top-n-sigma", dest="top_n_sigma", type=float, default=None,
                   help="top-n-sigma (-1: off)")
    g.add_argument("--mirostat", type=int, choices=[0, 1, 2], default=None, help="mirostat 1 or 2 (0: off)")
    g.add_argument("--mirostat-lr", type=float, default=None, help="mirostat learning rate, eta (0.1)")
    g.add_argument("--mirostat-ent", type=float, default=None, help="mirostat target entropy, tau (5.0)")
    g.add_argument("--dynatemp-range", type=float, default=None, help="dynamic temperature range (0: off)")
    g.add_argument("--dynatemp-exp", type=float, default=None, help="dynamic temperature exponent (1.0)")
    g.add_argument("--samplers", default=None, help="sampler order, ';'-separated names (llama.cpp's)")
    g.add_argument("--sampling-seq", "--sampler-seq", dest="sampling_seq", default=None,
                   help="sampler order as letters, e.g. edskypmxt")


def sampler_kwargs(args) -> dict:
    """Engine.generate keyword arguments for the flags given (unset flags keep llama.cpp's defaults)."""
    names = {"dry_multiplier": "dry_multiplier", "dry_base": "dry_base", "dry_allowed_length": "dry_allowed_length",
             "dry_penalty_last_n": "dry_penalty_last_n", "xtc_probability": "xtc_probability",
             "xtc_threshold": "xtc_threshold", "top_n_sigma": "top_n_sigma", "mirostat": "mirostat",
             "mirostat_lr": "mirostat_eta", "mirostat_ent": "mirostat_tau", "dynatemp_range": "dynatemp_range",
             "dynatemp_exp": "dynatemp_exponent"}
    out = {kw: getattr(args, flag) for flag, kw in names.items() if getattr(args, flag, None) is not None}
    brk = getattr(args, "dry_sequence_breaker", None)
    if brk is not None:
        out["dry_sequence_breakers"] = [] if brk == ["none"] else brk
    seq = getattr(args, "samplers", None) or getattr(args, "sampling_seq", None)
    if seq is not None:
        out["samplers"] = seq
    return out


def add_grammar_args(p):
    g = p.add_argument_group("constrained output")
    g.add_argument("--grammar", default=None, help="GBNF grammar the output must follow (llama.cpp's)")
    g.add_argument("--grammar-file", default=None, help="file holding a GBNF grammar")
    g.add_argument("-j", "--json-schema", default=None, help="JSON schema the output must follow")
    g.add_argument("-jf", "--json-schema-file", default=None, help="file holding a JSON schema")


def grammar_kwargs(args) -> dict:
    """grammar= / json_schema= for Engine.generate and Engine.chat; exits with a message naming a file
    that cannot be read or a schema that is not JSON (llguidance checks the rest when compiling)."""
    given = [f for f in ("grammar", "grammar_file", "json_schema", "json_schema_file") if getattr(args, f, None)]
    if len(given) > 1:
        _fail(f"give only one of {', '.join('--' + f.replace('_', '-') for f in given)}")
    if not given:
        return {}
    flag = given[0]
    text = getattr(args, flag)
    if flag.endswith("_file"):
        try:
            with open(text, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            _fail(f"cannot read --{flag.replace('_', '-')} {text}: {e.strerror}")
    if flag.startswith("grammar"):
        return {"grammar": text}
    try:
        return {"json_schema": json.loads(text)}
    except ValueError as e:
        _fail(f"--{flag.replace('_', '-')} is not valid JSON: {e}")


def _fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(1)
