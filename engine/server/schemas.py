"""The request bodies of every route as pydantic models: published in /openapi.json and enforced.

The handlers read the raw JSON themselves, so that a bad field gets OpenAI's error JSON (400) with a
message naming it, never FastAPI's 422. These models say the same thing in a form tools read:
FastAPI puts them in the OpenAPI document (`openapi_extra` of each route, `install_openapi`), clients
and fuzzers (Schemathesis, in the tests) generate requests from them, and `conform` checks a body
against them after the handler's own checks, so a nested value of the wrong type (a content part whose
text is a number, a tool that is not an object) is a 400 naming its place instead of a failure deeper
down. Unknown fields are allowed, as OpenAI's clients send fields we ignore.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .structured import SAMPLER_FIELDS

_OPEN = ConfigDict(extra="allow")


class _Open(BaseModel):
    model_config = _OPEN


# --- messages and their parts


class ContentPart(_Open):
    type: str
    text: str | None = None


class ToolCallFunction(_Open):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Open):
    id: str | None = None
    type: str | None = None
    function: ToolCallFunction | None = None


class Message(_Open):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionSpec(_Open):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: str = "function"
    function: FunctionSpec


class ResponseFormat(_Open):
    type: str
    json_schema: dict[str, Any] | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class StreamOptions(_Open):
    include_usage: bool | None = None


class Reasoning(_Open):
    effort: str | None = None


# --- sampling: OpenAI's fields and llama-server's (engine/server/structured.py's table)

_Num = Union[int, float]


class _SamplingBase(_Open):
    model: str | None = Field(None, description="a model alias from /v1/models (default: the first)")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate at most (server -n caps it)")
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: _Num | None = Field(None, ge=0, le=2)
    top_p: _Num | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: _Num | None = Field(None, ge=0, le=1)
    presence_penalty: _Num | None = Field(None, ge=-2, le=2)
    frequency_penalty: _Num | None = Field(None, ge=-2, le=2)
    repeat_penalty: _Num | None = Field(None, ge=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=16)
    n_probs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = None
    dry_sequence_breakers: list[str] | None = None
    samplers: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    json_schema: dict[str, Any] | str | None = None
    grammar: str | None = None


def _sampler_field(kind, low, high):
    t = int if kind is int else _Num
    return (t | None, Field(None, ge=low, le=high))


Sampling = create_model("Sampling", __base__=_SamplingBase,
                        **{name: _sampler_field(*spec) for name, spec in SAMPLER_FIELDS.items()})


# --- the routes' bodies


class ChatCompletionRequest(Sampling):
    messages: list[Message] = Field(..., min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    reasoning: Reasoning | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] = Field(..., description="text, an array of one text, or token ids")
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None


class EmbeddingRequest(_Open):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str | None = None


class ResponseInputItem(_Open):
    type: str | None = "message"
    role: str
    content: str | list[ContentPart]


class TextFormat(_Open):
    format: ResponseFormat | None = None


class ResponsesRequest(Sampling):
    input: str | list[ResponseInputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=0)
    reasoning: Reasoning | None = None
    text: TextFormat | None = None


class TokenizeRequest(_Open):
    model: str | None = None
    content: str = ""
    add_special: bool | None = None
    parse_special: bool | None = None


class DetokenizeRequest(_Open):
    model: str | None = None
    tokens: list[int] = []


class ApplyTemplateRequest(_Open):
    model: str | None = None
    messages: list[Message] = Field(..., min_length=1)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error object, the body of every 4xx and 5xx."""
    error: ErrorDetail


REQUEST_MODELS = [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest, TokenizeRequest,
                  DetokenizeRequest, ApplyTemplateRequest, ErrorResponse]


# --- FastAPI wiring

_ERRORS = {400: "the request is invalid (the message names the field)", 401: "missing or wrong API key",
           404: "unknown model", 413: "the body is larger than --max-body-size",
           500: "the model could not be loaded or failed", 503: "busy (see Retry-After) or the model is loading",
           504: "the request took longer than --request-timeout"}


def _error_responses(codes) -> dict:
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    return {str(c): {"description": _ERRORS[c], "content": {"application/json": {"schema": ref}}} for c in codes}


def post_doc(model: type[BaseModel], streams: bool = False) -> dict:
    """`openapi_extra` for a POST route whose body is `model` (the handler parses it by hand)."""
    ok = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
        "responses": {"200": {"description": "OK (server-sent events when 'stream' is true)" if streams else "OK",
                              "content": ok},
                      **_error_responses([400, 401, 404, 413, 500, 503] + ([504] if streams else []))},
    }


def get_doc(*codes: int, media: str = "application/json") -> dict:
    """`openapi_extra` for a GET route: what it answers besides 200."""
    return {"responses": {"200": {"description": "OK", "content": {media: {"schema": {}}}},
                          **_error_responses([401, *codes])}}


def install_openapi(app) -> None:
    """Put the request models in the document's components (FastAPI only lists the models it parses)."""
    plain = app.openapi

    def openapi():
        if app.openapi_schema is None:
            doc = plain()
            comps = doc.setdefault("components", {}).setdefault("schemas", {})
            for m in REQUEST_MODELS:
                schema = m.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
                comps.update(schema.pop("$defs", {}))
                comps[m.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def conform(body: dict, model: type[BaseModel]) -> None:
    """Raise ValueError naming the first field of `body` that `model` refuses (the handler's 400)."""
    try:
        model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise ValueError(f"'{where}': {err['msg']}") from None
