"""Request fields for structured output, tools and llama.cpp's other samplers.

OpenAI's `response_format`, `tools`, `tool_choice`, `parallel_tool_calls` and the Responses API's
`text.format`; llama-server's `json_schema`, `grammar` and sampler fields, under their names
(`dry_multiplier`, `xtc_probability`, `top_n_sigma`, `mirostat`, `n_probs`, ...). Each is checked
here so that a bad value is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Callable

# llama-server's request fields (tools/server/server-common / params_from_json_cmpl) and their types
_NUM = (int, float)
SAMPLER_FIELDS: dict[str, tuple[Any, float | None, float | None]] = {
    "typical_p": (_NUM, 0, 1),
    "min_keep": (int, 0, None),
    "top_n_sigma": (_NUM, None, None),
    "xtc_probability": (_NUM, 0, 1),
    "xtc_threshold": (_NUM, 0, None),
    "dynatemp_range": (_NUM, 0, None),
    "dynatemp_exponent": (_NUM, 0, None),
    "dry_multiplier": (_NUM, 0, None),
    "dry_base": (_NUM, 0, None),
    "dry_allowed_length": (int, 0, None),
    "dry_penalty_last_n": (int, -1, None),
    "mirostat": (int, 0, 2),
    "mirostat_tau": (_NUM, 0, None),
    "mirostat_eta": (_NUM, 0, None),
}


def extra_sampling(body: dict, field: Callable) -> dict:
    """The sampler fields present in `body`, typed and range-checked by app._field."""
    out: dict[str, Any] = {}
    for name, (kind, low, high) in SAMPLER_FIELDS.items():
        v = field(body, name, kind, None, low=low, high=high)
        if v is not None:
            out[name] = float(v) if kind is _NUM else int(v)
    rl = field(body, "repeat_last_n", int, None, low=-1)
    if rl is not None:
        out["penalty_last_n"] = rl
    brk = body.get("dry_sequence_breakers")
    if brk is not None:
        if not (isinstance(brk, list) and all(isinstance(s, str) for s in brk)):
            from .app import APIError

            raise APIError(400, "'dry_sequence_breakers' must be an array of strings", code="invalid_type")
        out["dry_sequence_breakers"] = brk
    bias = logit_bias_field(body.get("logit_bias"))
    if bias:
        out["logit_bias"] = bias
    if field(body, "ignore_eos", bool, False):
        out["ignore_eos"] = True
    samplers = body.get("samplers")
    if samplers is not None:
        if not (isinstance(samplers, str) or (isinstance(samplers, list) and all(isinstance(s, str) for s in samplers))):
            from .app import APIError

            raise APIError(400, "'samplers' must be a string or an array of sampler names", code="invalid_type")
        out["samplers"] = samplers
    return out


def logit_bias_field(v) -> dict | None:
    """`logit_bias` as OpenAI sends it ({"15496": -100}: token ids as strings) or as llama-server also
    takes it ([[15496, -100], ["Hello", false]]: a string biases each of its tokens, false bans).
    Returns {token id or string: bias}; the engine tokenizes the strings, and (as llama-server) skips
    ids outside the vocabulary."""
    import math

    from .app import APIError

    if v is None:
        return None

    def bias(x, key):
        if x is False:
            return -math.inf
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise APIError(400, f"'logit_bias' for {key!r} must be a number (or false to ban it), got {x!r}",
                           code="invalid_value")
        return float(x)

    out: dict = {}
    if isinstance(v, dict):
        for k, x in v.items():
            try:
                tok = int(k)
            except ValueError:
                raise APIError(400, f"'logit_bias' keys must be token ids, got {k!r}", code="invalid_value") from None
            out[tok] = bias(x, k)
    elif isinstance(v, list):
        for pair in v:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))
                    and not isinstance(pair[0], bool)):
                raise APIError(400, "'logit_bias' as an array takes [token id or string, bias] pairs",
                               code="invalid_type")
            out[pair[0]] = bias(pair[1], pair[0])
    else:
        raise APIError(400, "'logit_bias' must be an object of token id -> bias, or an array of pairs",
                       code="invalid_type")
    return out


def structured_fields(body: dict, responses: bool = False) -> dict:
    """response_format / json_schema / grammar as Engine keyword arguments (checked when compiled).
    The Responses API carries the format in `text.format`."""
    out: dict[str, Any] = {}
    rf = body.get("response_format")
    if responses:
        text = body.get("text")
        if isinstance(text, dict) and text.get("format") is not None:
            rf = text["format"]
    if rf is not None:
        out["response_format"] = rf
    if body.get("json_schema") is not None:
        out["json_schema"] = body["json_schema"]
    if body.get("grammar") is not None:
        out["grammar"] = body["grammar"]
    return out


def tool_fields(body: dict) -> dict:
    """tools / tool_choice / parallel_tool_calls for Engine.chat_plan."""
    out: dict[str, Any] = {}
    if body.get("tools") is not None:
        out["tools"] = body["tools"]
    if body.get("tool_choice") is not None:
        out["tool_choice"] = body["tool_choice"]
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    return out
