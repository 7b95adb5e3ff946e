"""The OpenAI-compatible HTTP API (Starlette through FastAPI, served by uvicorn).

Generation runs in a worker thread per request, pieces cross to the event loop through a queue, so
/health and other requests never wait on a running generation. A client that goes away sets the
request's cancel flag; its worker stops at the next token and frees the slot.
Errors are OpenAI's JSON (`{"error": {"message", "type", "code"}}`), 4xx for anything the client
sent; a failing request never takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import schemas
from .auth import APIKeys, KeyGuard, read_keys
from .file_guard import ModelFileGuard, ModelFileChanged
from .job import Job
from .sse import DONE, EventStream
from .limits import Admission, BodyLimit, Busy, ServerLimits, cap_max_tokens
from .registry import ModelRegistry, UnknownModel
from engine.gguf_file import GGUFError
from engine.tokenizer import TokenizerError
from .structured import extra_sampling, structured_fields, tool_fields


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "code": code}}, status_code=status,
                        headers=headers)


def conform(body: dict, model) -> None:
    """The body against its published schema (engine/server/schemas.py): a 400 naming the field."""
    try:
        schemas.conform(body, model)
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_type") from None


# --- request fields (checked by hand: the messages name the field, as OpenAI's do)


def _field(body: dict, name: str, kind, default=None, *, low=None, high=None):
    if name not in body or body[name] is None:
        return default
    v = body[name]
    ok = isinstance(v, kind) and not (isinstance(v, bool) and kind in (int, float, (int, float)))
    if not ok:
        want = {int: "an integer", float: "a number", (int, float): "a number", str: "a string", list: "an array",
                dict: "an object", bool: "a boolean"}.get(kind, str(kind))
        raise APIError(400, f"'{name}' must be {want}, got {type(v).__name__}", code="invalid_type")
    if low is not None and v < low or high is not None and v > high:
        raise APIError(400, f"'{name}' must be between {low} and {high}, got {v}", code="invalid_value")
    return v


def sampling_from(body: dict) -> dict:
    num = (int, float)
    max_tokens = _field(body, "max_completion_tokens", int, None, low=0)
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", int, None, low=0)
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise APIError(400, "'stop' must be a string or an array of strings", code="invalid_type")
    seed = _field(body, "seed", int, None)
    cache_prompt = _field(body, "cache_prompt", bool, True)
    return dict(cache_prompt=cache_prompt,
        max_tokens=-1 if max_tokens is None else max_tokens,
        temperature=float(_field(body, "temperature", num, 0.8, low=0, high=2)),
        top_p=float(_field(body, "top_p", num, 0.95, low=0, high=1)),
        top_k=int(_field(body, "top_k", int, 40, low=0)),
        min_p=float(_field(body, "min_p", num, 0.05, low=0, high=1)),
        presence_penalty=float(_field(body, "presence_penalty", num, 0.0, low=-2, high=2)),
        frequency_penalty=float(_field(body, "frequency_penalty", num, 0.0, low=-2, high=2)),
        repeat_penalty=float(_field(body, "repeat_penalty", num, 1.0, low=0)),
        seed=seed, stop=stop, **extra_sampling(body, _field),
    )


async def checked(fn, *args, **kw):
    """Run a request's preparation (templates, schema and grammar compilation) off the event loop;
    what it rejects (ConstraintError, a template error: ValueErrors) is the client's 400."""
    try:
        return await asyncio.to_thread(fn, *args, **kw)
    except ValueError as e:
        raise APIError(400, str(e), code="invalid_request") from None
    except RecursionError:  # a schema or tool definition nested deeper than Python's stack (found by fuzzing)
        raise APIError(400, "the request nests objects too deeply to compile", code="invalid_request") from None


def check_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty array", code="invalid_type")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] must be an object with a string 'role'", code="invalid_type")
        c = m.get("content")
        if isinstance(c, list) and not all(isinstance(p, dict) and isinstance(p.get("text") or "", str) for p in c):
            raise APIError(400, f"messages[{i}].content parts must be objects whose 'text' is a string",
                           code="invalid_type")
        if isinstance(c, list):  # content parts: keep the text ones
            m = dict(m, content="".join(p.get("text") or "" for p in c if p.get("type") == "text"))
            msgs[i] = m
        elif c is not None and not isinstance(c, str):
            raise APIError(400, f"messages[{i}].content must be a string or an array of parts", code="invalid_type")
    return msgs


def batching_props(engine) -> dict:
    """The model's batch scheduler for /props: its step budget, the steps run, and whether a request's
    tokens are independent of the others in its steps (engine/batching.py)."""
    sched = getattr(engine.cache, "scheduler", None)
    if sched is None:
        return {"batch_invariant": bool(getattr(engine.backend, "batch_invariant", False)), "continuous_batching": False}
    st = sched.stats()
    return {"batch_invariant": st["batch_invariant"], "continuous_batching": True, "n_batch": st["budget"],
            "batching": {"steps": st["steps"], "tokens": st["tokens"], "max_batch": st["max_batch"], "mode": st["mode"]}}


def device_props(engine) -> dict:
    """Where the model runs, for /props: the backend, the device, how many layers it holds."""
    be = engine.backend
    info = be.describe() if hasattr(be, "describe") else {"backend": be.name, "device": "cpu"}
    place = getattr(engine.model, "place", None)
    return {"backend": info.get("backend", be.name), "device": info.get("device", "cpu"),
            "n_gpu_layers": place.n_gpu_layers if place is not None else 0}


def create_app(registry: ModelRegistry, api_key: str | list[str] | APIKeys | None = None,
               limits: ServerLimits | None = None) -> FastAPI:
    """The app for `registry`. `api_key`: llama-server's --api-key (one key, or several separated by
    commas, or a list); `limits`: what the owner bounds (engine/server/limits.py)."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.files.start()  # model files held against truncation while served (engine/server/file_guard.py)
        yield

    app = FastAPI(title="ggufpy", docs_url=None, redoc_url=None, lifespan=lifespan)
    stats = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "predicted_ms": 0.0, "errors": 0}
    keys = api_key if isinstance(api_key, APIKeys) else APIKeys(
        read_keys(api_key) if isinstance(api_key, str) or api_key is None else list(api_key))
    limits = limits or ServerLimits()
    app.state.limits = limits
    admissions: dict[int, Admission] = {}  # per loaded model (its id: a reloaded model starts afresh)
    files = app.state.files = ModelFileGuard(registry)

    app.add_middleware(KeyGuard, keys=keys, deny=lambda: error_response(
        401, "invalid or missing API key", "authentication_error", "invalid_api_key"))  # APIError: the handler below
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # outermost: before auth and parsing
    schemas.install_openapi(app)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        stats["errors"] += 1
        return error_response(e.status, e.message, e.type, e.code, e.headers)

    @app.exception_handler(Busy)
    async def busy(request, e: Busy):
        stats["errors"] += 1
        return error_response(503, str(e), "server_error", "server_busy", {"Retry-After": str(e.retry_after)})

    @app.exception_handler(ModelFileChanged)
    async def file_changed(request, e: ModelFileChanged):
        stats["errors"] += 1
        return error_response(503, str(e), "server_error", "model_file_changed")

    @app.exception_handler(GGUFError)
    @app.exception_handler(TokenizerError)
    async def load_failed(request, e: Exception):  # a bad model file: its requests fail, the others go on
        stats["errors"] += 1
        return error_response(500, f"the model could not be loaded: {e}", "server_error", "model_load_failed")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):  # unknown routes and methods, in OpenAI's shape
        stats["errors"] += 1
        return error_response(e.status_code, str(e.detail), "invalid_request_error",
                              {404: "not_found", 405: "method_not_allowed"}.get(e.status_code), e.headers)

    @app.exception_handler(ClientDisconnect)
    async def gone(request, e: ClientDisconnect):  # the client left while sending: no one reads this
        return error_response(400, "the client disconnected before its request was complete", "invalid_request_error")

    @app.exception_handler(UnknownModel)
    async def unknown_model(request, e: UnknownModel):
        stats["errors"] += 1
        return error_response(404, str(e), "invalid_request_error", "model_not_found")

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        stats["errors"] += 1
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
        except RecursionError:
            raise APIError(400, "request body is not valid JSON: nested too deeply", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return body

    # --- status

    @app.get("/health", openapi_extra=schemas.get_doc(500, 503))
    async def health():
        if registry.load_error is not None:
            return JSONResponse({"status": "error", "error": str(registry.load_error)}, status_code=500)
        if registry.loading and not registry.loaded:
            return JSONResponse({"status": "loading model"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models", openapi_extra=schemas.get_doc())
    @app.get("/models", openapi_extra=schemas.get_doc())
    async def models():
        now = int(time.time())
        return {"object": "list", "data": [{"id": a, "object": "model", "created": now, "owned_by": "ggufpy",
                                            "meta": {"path": s.path, "n_ctx": s.n_ctx}}
                                           for a, s in registry.specs.items()]}

    @app.get("/props", openapi_extra=schemas.get_doc(500, 503))
    async def props():
        m = await registry.get(None)
        e = m.engine
        return {"model_path": m.spec.path, "model_alias": m.spec.alias, "total_slots": len(m.engines),
                "n_ctx": e.n_ctx, "chat_template": e.chat_template(m.spec.chat_format).source
                if hasattr(e.chat_template(m.spec.chat_format), "source") else None,
                "default_generation_settings": {"n_ctx": e.n_ctx}, **device_props(e), **batching_props(e)}

    @app.get("/metrics", openapi_extra=schemas.get_doc(media="text/plain"))
    async def metrics():
        lines = []
        for name, kind, value in (
                ("requests_total", "counter", stats["requests"]), ("errors_total", "counter", stats["errors"]),
                ("prompt_tokens_total", "counter", stats["prompt_tokens"]),
                ("tokens_predicted_total", "counter", stats["completion_tokens"]),
                ("predicted_tokens_seconds", "gauge",
                 stats["completion_tokens"] / (stats["predicted_ms"] / 1e3) if stats["predicted_ms"] else 0.0),
                ("requests_processing", "gauge", sum(m.active for m in registry.loaded.values())),
                ("requests_deferred", "gauge", sum(m.waiting for m in registry.loaded.values()))):
            lines += [f"# TYPE ggufpy:{name} {kind}", f"ggufpy:{name} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # --- tokens and templates

    @app.post("/tokenize", openapi_extra=schemas.post_doc(schemas.TokenizeRequest))
    async def tokenize(request: Request):
        body = await body_of(request)
        content = _field(body, "content", str, "")
        conform(body, schemas.TokenizeRequest)
        m = await registry.get(body.get("model"))
        ids = m.engine.tokenize(content, add_bos=bool(body.get("add_special", False)),
                                special=bool(body.get("parse_special", True)))
        return {"tokens": ids}

    @app.post("/detokenize", openapi_extra=schemas.post_doc(schemas.DetokenizeRequest))
    async def detokenize(request: Request):
        body = await body_of(request)
        toks = _field(body, "tokens", list, [])
        conform(body, schemas.DetokenizeRequest)
        m = await registry.get(body.get("model"))
        if not all(isinstance(t, int) and 0 <= t < m.engine.n_vocab for t in toks):
            raise APIError(400, f"'tokens' must be token ids in [0, {m.engine.n_vocab})", code="invalid_value")
        return {"content": m.engine.detokenize(toks)}

    @app.post("/apply-template", openapi_extra=schemas.post_doc(schemas.ApplyTemplateRequest))
    async def apply_template(request: Request):
        body = await body_of(request)
        msgs = check_messages(body)
        conform(body, schemas.ApplyTemplateRequest)
        m = await registry.get(body.get("model"))
        return {"prompt": m.engine.apply_template(msgs, template=m.spec.chat_format)}  # text, not ids

    # --- generation

    def account(done):
        stats["requests"] += 1
        stats["prompt_tokens"] += done.prompt_tokens
        stats["completion_tokens"] += len(done.tokens)
        stats["predicted_ms"] += done.timings.predicted_ms

    def usage_of(done) -> dict:
        return dict(done.usage, prompt_tokens_details={"cached_tokens": done.timings.cache_n})

    def timings_of(done) -> dict:
        t = done.timings
        return t.as_dict() if hasattr(t, "as_dict") else dict(t.__dict__)

    def stream_error(e: Exception) -> str:  # a chat or completion stream's end when the generation failed
        return f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n" + DONE

    def check_fits(engine, ids, max_tokens):
        bad = next((t for t in ids if not (isinstance(t, int) and 0 <= t < engine.n_vocab)), None)
        if bad is not None:  # caller-given token ids: one out of range would index past the embeddings
            raise APIError(400, f"token id {bad!r} is not in the vocabulary [0, {engine.n_vocab})",
                           code="invalid_value")
        if len(ids) >= engine.n_ctx:
            raise APIError(400, f"the prompt is {len(ids)} tokens, more than the context of {engine.n_ctx} allows",
                           code="context_length_exceeded")
        if max_tokens is not None and max_tokens >= 0 and len(ids) + max_tokens > engine.n_ctx:
            raise APIError(400, f"prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds the context of "
                                f"{engine.n_ctx} tokens", code="context_length_exceeded")

    def runs(n: int, kw: dict, run):
        """The iterator of n generations one after the other in the slot (seed, seed+1, ...), each
        piece tagged with its choice index."""
        def gen(engine):
            for i in range(n):
                kwi = dict(kw, seed=None if kw.get("seed") is None else kw["seed"] + i)
                for p in run(engine, kwi):
                    p.index = i
                    yield p
        return gen

    def n_of(body) -> int:
        return int(_field(body, "n", int, 1, low=1, high=16))

    def chat_logprobs(entries):
        strip = lambda r: {k: v for k, v in r.items() if k != "id"}  # noqa: E731
        return {"content": [dict(strip(e), top_logprobs=[strip(t) for t in e["top_logprobs"]]) for e in entries]}

    # --- admission: the piece a scheduler takes over (limits.Admission, file_guard, the request timeout)

    def admission_of(m) -> Admission:
        a = getattr(m, "admission", None)
        if a is None:
            a = m.admission = Admission(limits.max_concurrent or len(m.engines), limits.max_queue, limits.retry_after)
        return a

    def timed_out(what: str) -> APIError:
        return APIError(504, f"the request {what} longer than the server's limit of {limits.request_timeout:g} s "
                             "(--request-timeout) and was cancelled", "server_error", "request_timeout")

    async def admitted(m, deadline):
        """Wait for the model's turn (503 + Retry-After when too many wait); the release, once."""
        files.hold(m)
        adm = admission_of(m)
        try:
            await asyncio.wait_for(adm.acquire(), None if deadline is None else max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise timed_out("waited") from None
        done = []

        def release():
            if not done:
                done.append(True)
                adm.release()
        return release

    async def begin(m, make_iter, prompt: list[int] | None = None, stream: bool = True) -> Job:
        """The Job of a generation once admitted; cancelled with a 504 past --request-timeout. Not
        `stream`ed: only the finished completions come to the event loop (Job's final_only)."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + limits.request_timeout if limits.request_timeout > 0 else None
        release = await admitted(m, deadline)
        timer = []

        def finished():
            release()
            for t in timer:
                t.cancel()

        def guarded(engine):
            try:
                files.check(m)  # the file may have changed while the request waited
                yield from make_iter(engine)
            finally:
                loop.call_soon_threadsafe(finished)

        job = Job(m, guarded, buffer=limits.stream_buffer, prompt=prompt, final_only=not stream)
        try:
            files.hold(m, job)
            await job.start()
        except BaseException:
            finished()
            raise
        if deadline is not None:
            def expire():
                job.cancel.set()
                job.put(timed_out("took"))
            timer.append(loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), expire))
        return job

    def capped(kw: dict) -> dict:
        kw["max_tokens"] = cap_max_tokens(kw["max_tokens"], limits.n_predict)
        return kw

    async def chat_plan(m, msgs, extra, kw, structured):
        """The chat prompt (rendered once: generation takes its ids as they are), its tool-call format
        and constraint, checked against the context; max_tokens -1 becomes "the rest of the context"."""
        capped(kw)
        plan = await checked(m.engine.chat_plan, msgs, template=m.spec.chat_format, template_kwargs=extra,
                             **structured)
        check_fits(m.engine, plan.ids, kw["max_tokens"])
        if kw["max_tokens"] < 0:
            kw["max_tokens"] = m.engine.n_ctx - len(plan.ids)
        return plan

    @app.post("/v1/chat/completions", openapi_extra=schemas.post_doc(schemas.ChatCompletionRequest, streams=True))
    @app.post("/chat/completions", openapi_extra=schemas.post_doc(schemas.ChatCompletionRequest, streams=True))
    async def chat_completions(request: Request):
        body = await body_of(request)
        msgs = check_messages(body)
        kw = sampling_from(body)
        n = n_of(body)
        if bool(_field(body, "logprobs", bool, False)):
            kw["logprobs"] = int(_field(body, "top_logprobs", int, 0, low=0, high=20))
        elif _field(body, "n_probs", int, 0, low=0, high=20):  # llama-server's name
            kw["logprobs"] = int(body["n_probs"])
        stream = bool(body.get("stream", False))
        include_usage = bool(_field(body, "stream_options", dict, {}).get("include_usage", False))
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise APIError(400, "'tools' must be an array", code="invalid_type")
        structured = {**structured_fields(body), **tool_fields(body)}
        extra = {}
        reasoning = body.get("reasoning")
        effort = body.get("reasoning_effort") or (reasoning.get("effort") if isinstance(reasoning, dict) else None)
        if effort is not None:
            extra["reasoning_effort"] = effort
        conform(body, schemas.ChatCompletionRequest)
        m = await registry.get(body.get("model"))
        plan = await chat_plan(m, msgs, extra, kw, structured)
        job = await begin(m, runs(n, kw, lambda e, k: e.chat_ids(plan.ids, stream=True, plan=plan, **k)),
                          plan.ids if kw["cache_prompt"] else None, stream)
        cid, created, model_name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), m.spec.alias

        def chunk(i: int, delta: dict, finish=None, logprobs=None, **more) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": logprobs}], **more}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        if stream:
            n_calls, usage, begun = {}, {"prompt_tokens": 0, "completion_tokens": 0}, set()
            head = (f'data: {{"id": {json.dumps(cid)}, "object": "chat.completion.chunk", "created": {created}, '
                    f'"model": {json.dumps(model_name, ensure_ascii=False)}, "choices": [{{"index": ')

            def lp_of(p):
                return chat_logprobs(p.logprobs) if p.logprobs else None

            def render(p) -> str:
                i, out = p.index, []
                if i not in begun:
                    begun.add(i)
                    out.append(chunk(i, {"role": "assistant", "content": ""}))
                if p.completion is not None:
                    done = p.completion
                    account(done)
                    usage["prompt_tokens"] = done.prompt_tokens
                    usage["completion_tokens"] += len(done.tokens)
                    usage.setdefault("prompt_tokens_details", {"cached_tokens": done.timings.cache_n})
                    out.append(chunk(i, {}, done.finish_reason, timings=timings_of(done)))
                elif p.kind == "content" and p.text and not p.logprobs:  # most tokens: chunk()'s text, formatted once
                    out.append(f'{head}{i}, "delta": {{"content": {json.dumps(p.text, ensure_ascii=False)}}}, '
                               '"finish_reason": null, "logprobs": null}]}\n\n')
                elif p.kind == "reasoning" and p.text:
                    out.append(chunk(i, {"reasoning_content": p.text}, logprobs=lp_of(p)))
                elif p.kind == "tool_call":
                    k = n_calls.get(i, 0)
                    if p.text == "" and p.name:
                        call = {"index": k, "id": p.call_id or f"call_{k}", "type": "function",
                                "function": {"name": p.name, "arguments": ""}}
                        out.append(chunk(i, {"tool_calls": [call]}))
                        n_calls[i] = k + 1
                    elif p.text:
                        out.append(chunk(i, {"tool_calls": [{"index": k - 1, "function": {"arguments": p.text}}]}))
                elif p.text:
                    out.append(chunk(i, {"content": p.text}, logprobs=lp_of(p)))
                return "".join(out)

            def finish() -> str:
                if not include_usage:
                    return DONE
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [], "usage": usage}
                return f"data: {json.dumps(obj)}\n\n" + DONE

            return EventStream(job, render, finish, stream_error,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        dones = {}
        async for p in job.pieces():
            if p.completion is not None:
                dones[p.index] = p.completion
                account(p.completion)
        choices = []
        for i in range(n):
            done = dones[i]
            msg = {"role": "assistant", "content": done.message.get("content", done.text)}
            if done.message.get("reasoning_content"):
                msg["reasoning_content"] = done.message["reasoning_content"]
            if done.message.get("tool_calls"):
                msg["tool_calls"] = done.message["tool_calls"]
            choices.append({"index": i, "message": msg, "finish_reason": done.finish_reason,
                            "logprobs": chat_logprobs(done.logprobs) if done.logprobs is not None else None})
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name, "choices": choices,
                "usage": total_usage(dones.values()), "timings": timings_of(dones[0])}

    def total_usage(dones) -> dict:
        dones = list(dones)
        c = sum(len(d.tokens) for d in dones)
        p = dones[0].prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": dones[0].timings.cache_n}}

    def legacy_logprobs(entries, offset: int) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            out["tokens"].append(e["token"])
            out["token_logprobs"].append(e["logprob"])
            out["top_logprobs"].append({t["token"]: t["logprob"] for t in e["top_logprobs"]})
            out["text_offset"].append(offset)
            offset += len(e["token"])
        return out

    @app.post("/v1/completions", openapi_extra=schemas.post_doc(schemas.CompletionRequest, streams=True))
    @app.post("/completions", openapi_extra=schemas.post_doc(schemas.CompletionRequest, streams=True))
    async def completions(request: Request):
        body = await body_of(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
            raise APIError(400, "'prompt' must be a string, an array of one string, or an array of token ids",
                           code="invalid_type")
        kw = sampling_from(body)
        if body.get("max_tokens") is None:
            kw["max_tokens"] = 16  # OpenAI's default for completions
        capped(kw)
        n_lp = _field(body, "logprobs", int, None, low=0, high=20)
        if n_lp is None:
            n_lp = _field(body, "n_probs", int, None, low=0, high=20)  # llama-server's name
        if n_lp is not None:
            kw["logprobs"] = n_lp
        n = n_of(body)
        echo = bool(body.get("echo", False))
        stream = bool(body.get("stream", False))
        conform(body, schemas.CompletionRequest)
        m = await registry.get(body.get("model"))
        eng = m.engine
        ids = eng.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        check_fits(eng, ids, kw["max_tokens"])
        structured = structured_fields(body)
        if structured:
            from engine.constrain import compile_grammar

            kw["grammar"] = await checked(compile_grammar, eng.tokenizer, **structured)
        job = await begin(m, runs(n, kw, lambda e, k: e.generate(ids, stream=True, **k)),
                          ids if kw["cache_prompt"] else None, stream)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = eng.detokenize(ids) if echo else ""

        def obj(i, text, finish=None, logprobs=None, **more):
            return {"id": cid, "object": "text_completion", "created": created, "model": m.spec.alias,
                    "choices": [{"index": i, "text": text, "finish_reason": finish, "logprobs": logprobs}], **more}

        if stream:
            begun = set()

            def render(p) -> str:
                out = []
                if head and p.index not in begun:
                    begun.add(p.index)
                    out.append(f"data: {json.dumps(obj(p.index, head), ensure_ascii=False)}\n\n")
                if p.completion is not None:
                    account(p.completion)
                    end = obj(p.index, '', p.completion.finish_reason, usage=usage_of(p.completion))
                    out.append(f"data: {json.dumps(end)}\n\n")
                elif p.text:
                    lp = legacy_logprobs(p.logprobs, 0) if p.logprobs else None
                    out.append(f"data: {json.dumps(obj(p.index, p.text, logprobs=lp), ensure_ascii=False)}\n\n")
                return "".join(out)

            return EventStream(job, render, lambda: DONE, stream_error)
        dones = {}
        async for p in job.pieces():
            if p.completion is not None:
                dones[p.index] = p.completion
                account(p.completion)
        choices = [{"index": i, "text": head + dones[i].text, "finish_reason": dones[i].finish_reason,
                    "logprobs": legacy_logprobs(dones[i].logprobs, len(head)) if dones[i].logprobs is not None else None}
                   for i in range(n)]
        return {"id": cid, "object": "text_completion", "created": created, "model": m.spec.alias, "choices": choices,
                "usage": total_usage(dones.values()), "timings": timings_of(dones[0])}

    @app.post("/v1/embeddings", openapi_extra=schemas.post_doc(schemas.EmbeddingRequest))
    @app.post("/embeddings", openapi_extra=schemas.post_doc(schemas.EmbeddingRequest))
    async def embeddings(request: Request):
        body = await body_of(request)
        inp = body.get("input")
        if isinstance(inp, str) or (isinstance(inp, list) and inp and all(isinstance(t, int) for t in inp)):
            inputs = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, str) or (isinstance(t, list) and all(
                isinstance(i, int) for i in t)) for t in inp):
            inputs = inp
        else:
            raise APIError(400, "'input' must be a string, an array of strings, or token ids", code="invalid_type")
        conform(body, schemas.EmbeddingRequest)
        m = await registry.get(body.get("model"))
        eng = m.engine
        ids = [eng.tokenize(x) if isinstance(x, str) else list(x) for x in inputs]
        for i, t in enumerate(ids):
            if not t:
                raise APIError(400, f"input[{i}] is empty", code="invalid_value")
            check_fits(eng, t, 0)
        vectors = await run_in_slot(m, lambda e: [e.embed(t) for t in ids])
        n = sum(len(t) for t in ids)
        stats["requests"] += 1
        stats["prompt_tokens"] += n
        return {"object": "list", "model": m.spec.alias,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    async def run_in_slot(m, fn):
        deadline = time.monotonic() + limits.request_timeout if limits.request_timeout > 0 else None
        release = await admitted(m, deadline)
        try:
            return await _in_slot(m, lambda e: files.check(m) or fn(e))
        finally:
            release()

    async def _in_slot(m, fn):
        m.waiting += 1
        try:
            eng = await m.free.get()
        finally:
            m.waiting -= 1
        m.active += 1
        try:
            return await asyncio.to_thread(fn, eng)
        finally:
            m.active -= 1
            m.free.put_nowait(eng)

    @app.post("/v1/responses", openapi_extra=schemas.post_doc(schemas.ResponsesRequest, streams=True))
    @app.post("/responses", openapi_extra=schemas.post_doc(schemas.ResponsesRequest, streams=True))
    async def responses(request: Request):
        """OpenAI's Responses API (Open Responses): `input` as a string or message items,
        `instructions`, `reasoning.effort`; output items `reasoning` and `message`."""
        body = await body_of(request)
        inp = body.get("input")
        msgs = []
        instructions = _field(body, "instructions", str, None)
        if instructions:
            msgs.append({"role": "system", "content": instructions})
        if isinstance(inp, str):
            msgs.append({"role": "user", "content": inp})
        elif isinstance(inp, list) and inp:
            for i, item in enumerate(inp):
                if not isinstance(item, dict) or item.get("type", "message") != "message" or "role" not in item:
                    raise APIError(400, f"input[{i}] must be a message item with a role", code="invalid_type")
                c = item.get("content")
                if isinstance(c, list):  # text parts (a null text is none); anything else is the client's error
                    if not all(isinstance(p, dict) and isinstance(p.get("text") or "", str) for p in c):
                        raise APIError(400, f"input[{i}].content parts must be objects whose 'text' is a string",
                                       code="invalid_type")
                    c = "".join(p.get("text") or "" for p in c)
                if not isinstance(c, str):
                    raise APIError(400, f"input[{i}].content must be text or text parts", code="invalid_type")
                msgs.append({"role": item["role"], "content": c})
        else:
            raise APIError(400, "'input' must be a string or a non-empty array of message items", code="invalid_type")
        kw = sampling_from({k: v for k, v in body.items() if k not in ("max_tokens",)} |
                           ({"max_tokens": body["max_output_tokens"]} if body.get("max_output_tokens") is not None else {}))
        extra = {}
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict) and reasoning.get("effort"):
            extra["reasoning_effort"] = reasoning["effort"]
        stream = bool(body.get("stream", False))
        conform(body, schemas.ResponsesRequest)
        m = await registry.get(body.get("model"))
        plan = await chat_plan(m, msgs, extra, kw, structured_fields(body, responses=True))
        job = await begin(m, lambda e: e.chat_ids(plan.ids, stream=True, plan=plan, **kw),
                          plan.ids if kw["cache_prompt"] else None, stream)
        rid, created = f"resp_{uuid.uuid4().hex[:24]}", int(time.time())
        msg_id, rs_id = f"msg_{uuid.uuid4().hex[:24]}", f"rs_{uuid.uuid4().hex[:24]}"

        def response_obj(status, reasoning_text, text, done=None):
            output = []
            if reasoning_text:
                output.append({"type": "reasoning", "id": rs_id, "summary": [],
                               "content": [{"type": "reasoning_text", "text": reasoning_text}]})
            output.append({"type": "message", "id": msg_id, "role": "assistant", "status": status,
                           "content": [{"type": "output_text", "text": text, "annotations": []}]})
            obj = {"id": rid, "object": "response", "created_at": created, "model": m.spec.alias, "status": status,
                   "output": output, "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
                   "instructions": instructions, "error": None, "incomplete_details": None}
            if done is not None:
                u = done.usage
                obj["usage"] = {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                                "total_tokens": u["total_tokens"], "input_tokens_details": {"cached_tokens": done.timings.cache_n},
                                "output_tokens_details": {"reasoning_tokens": 0}}
                if done.finish_reason == "length":
                    obj["status"] = "incomplete"
                    obj["incomplete_details"] = {"reason": "max_output_tokens"}
            return obj

        if stream:
            seq, state = 0, {"reasoning": "", "text": "", "started": False}

            def ev(kind, **data):
                nonlocal seq
                seq += 1
                payload = json.dumps({'type': kind, 'sequence_number': seq, **data}, ensure_ascii=False)
                return f"event: {kind}\ndata: {payload}\n\n"

            def render(p) -> str:
                out, reasoning_text = [], state["reasoning"]
                if p.completion is not None:
                    done = p.completion
                    account(done)
                    if reasoning_text:
                        out.append(ev("response.reasoning_text.done", item_id=rs_id, output_index=0, content_index=0,
                                      text=reasoning_text))
                    out.append(ev("response.output_text.done", item_id=msg_id, output_index=1 if reasoning_text else 0,
                                  content_index=0, text=state["text"]))
                    final = response_obj("completed", reasoning_text, state["text"], done)
                    out.append(ev("response.output_item.done", output_index=len(final["output"]) - 1,
                                  item=final["output"][-1]))
                    out.append(ev("response.completed" if final["status"] == "completed" else "response.incomplete",
                                  response=final))
                elif p.kind == "reasoning" and p.text:
                    state["reasoning"] += p.text
                    out.append(ev("response.reasoning_text.delta", item_id=rs_id, output_index=0, content_index=0,
                                  delta=p.text))
                elif p.kind == "content" and p.text:
                    if not state["started"]:
                        state["started"] = True
                        item = {"type": "message", "id": msg_id, "role": "assistant", "status": "in_progress",
                                "content": []}
                        out.append(ev("response.output_item.added", output_index=1 if reasoning_text else 0, item=item))
                        out.append(ev("response.content_part.added", item_id=msg_id,
                                      output_index=1 if reasoning_text else 0, content_index=0,
                                      part={"type": "output_text", "text": "", "annotations": []}))
                    state["text"] += p.text
                    out.append(ev("response.output_text.delta", item_id=msg_id, output_index=1 if reasoning_text else 0,
                                  content_index=0, delta=p.text))
                return "".join(out)

            opening = ev("response.created", response=response_obj("in_progress", "", "")) + \
                ev("response.in_progress", response=response_obj("in_progress", "", ""))
            return EventStream(job, render, lambda: "", lambda e: ev("error", message=str(e), code="server_error"),
                               opening=opening)
        done = None
        async for p in job.pieces():
            if p.completion is not None:
                done = p.completion
        account(done)
        return response_obj("completed", done.message.get("reasoning_content", ""), done.message.get("content", ""), done)

    @app.get("/", openapi_extra=schemas.get_doc(media="text/html"))
    async def index():
        from fastapi.responses import HTMLResponse

        from .webui import PAGE

        return HTMLResponse(PAGE)

    return app

