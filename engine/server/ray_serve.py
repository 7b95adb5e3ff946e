"""The server as replicas on a Ray cluster (Ray Serve): `serve --ray [--replicas N | --autoscale MIN:MAX]`.

Scaling past one machine is Ray Serve's job, not ours: each replica is a Ray actor that builds the same
FastAPI app as `serve` (engine/server/app.py) over its own ModelRegistry, so it loads its own models
(one replica per machine, or per GPU with `num_gpus=1`), and Ray's HTTP proxy on every node spreads the
requests. Ray restarts a replica that dies; the requests it held fail at the proxy with an error (a 500
before the response started, a cut stream after), never a hang, and new requests go to the live replicas
until the restarted one is up. Ray is an optional extra (`pip install 'ggufpy[ray]'`): this module is
imported only by `serve --ray` and by Ray itself (the router, the application builder).

Routing a conversation back to its prefix. Ray Serve's HTTP proxy picks a replica before it reads the
request body (the body reaches the replica through the proxy's ASGI `receive`), so no router can look at
the messages; what it sees is the request's metadata, and the proxy fills `session_id` from the header
named by `RAY_SERVE_SESSION_ID_HEADER_KEY` (default `x-session-id`). `ConversationRouter`, a
`ray.serve.request_router.RequestRouter`, ranks the live replicas by rendezvous hashing of that id:
every turn of a conversation that sends the same header goes to the same replica, whose prefix cache
holds the earlier turns; when that replica is full (its `max_ongoing_requests`) the request spills to
the next in the id's ranking, and when a replica leaves only its own conversations move. Requests
without the header go to the less loaded of two random replicas (Ray's default policy). Clients opt
in with one header, e.g. `OpenAI(default_headers={"x-session-id": conversation_id})`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, HTTPOptions, RequestRouterConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

APP_NAME = "engine"
GPU_BACKENDS = ("cuda", "rocm", "opencl")


# --- routing


def rendezvous_rank(key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids in the order `key` prefers them (highest random weight hashing): stable while the
    set is, and a replica that leaves moves only the keys it ranked first."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{key}\x00{rid}".encode(), digest_size=8).digest()

    return sorted(replica_ids, key=weight, reverse=True)


class ConversationRouter(RequestRouter):
    """Session-affine routing: a request's `session_id` (the `x-session-id` header) ranks the replicas
    by rendezvous hashing, one replica per rank, so Ray's loop tries the preferred replica first and
    the next ones only when it is full; without a session id, power of two choices."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # after every rank has been tried, Ray's loop backs off before the next round (not a spin)
            pending_request.routing_context.should_backoff = True
        key = pending_request.metadata.session_id if pending_request is not None else ""
        if not key:
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[rid]] for rid in rendezvous_rank(key, list(by_id))]


# --- the replica


@serve.ingress()  # no app here: each replica builds its own, in __serve_build_asgi_app__
class EngineServer:
    """One replica: its own registry (models loaded in this process) behind the shared FastAPI app. The
    server stack is imported inside the methods, so Ray's proxy importing this module (for the router)
    does not load it."""

    async def __init__(self, specs: list[dict], api_keys: list[str], limits: dict, memory_budget: int | None = None):
        from engine.server.registry import ModelRegistry, ModelSpec

        self.registry = ModelRegistry([ModelSpec(**s) for s in specs], memory_budget=memory_budget)
        self.api_keys, self.limits = api_keys, limits
        # the first model loads before Ray marks the replica running, so no request waits on a load; a
        # load that fails fails the constructor, and Ray retries it (max_constructor_retry_count)
        await self.registry.get(None)

    def __serve_build_asgi_app__(self):
        from engine.server.app import create_app
        from engine.server.limits import ServerLimits

        return create_app(self.registry, api_key=self.api_keys, limits=ServerLimits(**self.limits))


# --- the deployment's options


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX), 0 <= MIN <= MAX, MAX >= 1."""
    lo, sep, hi = str(text).partition(":")
    try:
        lo_n, hi_n = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"--autoscale takes MIN:MAX (two integers), got {text!r}") from None
    if not sep or lo_n < 0 or hi_n < max(1, lo_n):
        raise ValueError(f"--autoscale takes MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return lo_n, hi_n


def wants_gpu(specs: list[dict], cluster_gpus: float) -> bool:
    """A replica asks Ray for a GPU when a model's backend is a GPU one, or `auto` on a cluster that
    has GPUs; otherwise it runs on CPUs only (and Ray hides the GPUs from it)."""
    backends = {str(s.get("backend") or "auto") for s in specs}
    return bool(backends & set(GPU_BACKENDS)) or ("auto" in backends and cluster_gpus > 0)


def deployment_options(specs: list[dict], limits: dict, *, replicas: int | None = None,
                       autoscale: tuple[int, int] | None = None, num_cpus: float | None = None,
                       cluster_gpus: float = 0, graceful_shutdown_s: float = 10) -> dict:
    """`serve.deployment` options for the replicas of `specs`.

    A replica takes `2 x slots` requests from the proxy (one set running, one ready to start), where
    slots is --max-concurrent-requests or the first model's --parallel; more wait at the proxy, where
    the router can still place them, up to --max-queue (then 503, as the single server answers)."""
    if replicas is not None and autoscale is not None:
        raise ValueError("--replicas and --autoscale exclude each other")
    slots = max(1, int(limits.get("max_concurrent") or 0) or int(specs[0].get("parallel") or 1))
    actor = {"num_cpus": float(num_cpus or 1)}
    if wants_gpu(specs, cluster_gpus):
        actor["num_gpus"] = 1
    opts = {"name": "EngineServer", "ray_actor_options": actor, "max_ongoing_requests": 2 * slots,
            "max_queued_requests": int(limits.get("max_queue", 64)) or -1,
            "graceful_shutdown_timeout_s": float(graceful_shutdown_s),
            "request_router_config": RequestRouterConfig(
                request_router_class="engine.server.ray_serve.ConversationRouter")}
    if autoscale is not None:
        lo, hi = autoscale
        opts["autoscaling_config"] = AutoscalingConfig(min_replicas=lo, max_replicas=hi,
                                                       initial_replicas=max(lo, 1), target_ongoing_requests=slots)
    else:
        opts["num_replicas"] = int(replicas if replicas is not None else 1)
        if opts["num_replicas"] < 1:
            raise ValueError(f"--replicas must be at least 1, got {replicas}")
    return opts


def for_replicas(spec) -> dict:
    """A ModelSpec as the replicas get it: a local file by absolute path (the same path must exist on
    every node, e.g. a shared volume), a reference (hf://, pypi://, ...) as is, pulled by each replica."""
    from engine.store import parse_ref

    d = dataclasses.asdict(spec)
    if d["path"] is not None and parse_ref(d["path"]).source == "file":
        d["path"] = str(Path(parse_ref(d["path"]).parts["path"]).expanduser().absolute())
    d["file"] = None
    return d


def _cluster_gpus() -> float:
    try:
        return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0
    except Exception:  # a cluster that cannot say: no GPU asked for, unless a backend names one
        return 0.0


def application(specs: list[dict], api_keys: list[str], limits: dict, memory_budget: int | None = None,
                **options):
    """The Ray Serve application: the replica class with `deployment_options(...)`, bound to its args."""
    opts = deployment_options(specs, limits, cluster_gpus=_cluster_gpus(), **options)
    return serve.deployment(EngineServer, **opts).bind(specs, api_keys, limits, memory_budget)


def build_app(args: dict):
    """Ray Serve application builder (`import_path: engine.server.ray_serve:build_app` in a Serve config,
    e.g. a KubeRay RayService). `args` is the JSON `serve --config` takes (`models: [{model, model_alias,
    n_ctx, parallel, ...}]`), inline or by path (`config: FILE`), plus `replicas` or `autoscale`
    ("MIN:MAX"), `num_cpus`, `api_key`/`api_key_file` and the limits (`max_queue`, `n_predict`, ...).
    Ray Serve's own `deployments:` section (name EngineServer) overrides the replica count and options."""
    from engine.server.auth import read_keys
    from engine.server.limits import ServerLimits, parse_size
    from engine.server.registry import ModelSpec

    args = dict(args or {})
    if "config" in args:
        with open(args.pop("config")) as f:
            args = {**json.load(f), **args}
    defaults = {k: args[k] for k in ("n_ctx", "parallel", "n_threads", "pull", "backend", "n_gpu_layers", "n_batch", "batching")
                if k in args}
    if "use_mmap" in args:  # llama-cpp-python's name, as in a model entry
        defaults["mmap"] = args["use_mmap"]
    specs = [for_replicas(ModelSpec.from_config(e, defaults)) for e in args.get("models", [])]
    if not specs:
        raise ValueError("build_app: no model to serve (args need 'models' or 'config')")
    known = {f.name for f in dataclasses.fields(ServerLimits)}
    limits = {k: v for k, v in args.items() if k in known}
    if "max_body_size" in args:
        limits["max_body_bytes"] = parse_size(args["max_body_size"])
    keys = read_keys(args.get("api_key"), args.get("api_key_file"))
    autoscale = parse_autoscale(args["autoscale"]) if args.get("autoscale") else None
    replicas = args.get("replicas")
    budget = int(float(args["memory_budget_gb"]) * 1e9) if args.get("memory_budget_gb") else None
    return application(specs, keys, dataclasses.asdict(ServerLimits(**limits)), budget,
                       replicas=None if autoscale else int(replicas or 1), autoscale=autoscale,
                       num_cpus=args.get("num_cpus"),
                       graceful_shutdown_s=float(args.get("timeout_graceful_shutdown", 10)))


# --- `python -m engine serve --ray`


def specs_for_ray(args, specs_from_args) -> tuple[list[dict], str, int]:
    """The models as `serve` reads them, but references stay references (each replica pulls its own
    copy; the driver may not even be on a node) and files get absolute paths."""
    from engine.commands.common import model_name
    from engine.server.registry import ModelSpec
    from engine.store import DEFAULT_MODEL, parse_ref

    if args.config:
        specs, host, port = specs_from_args(args)  # a config's entries are not resolved here
        return [for_replicas(s) for s in specs], host, port
    name = model_name(args) or DEFAULT_MODEL
    is_ref = parse_ref(name).source != "file"
    if not is_ref and not Path(name).expanduser().is_file():
        raise ValueError(f"model file not found: {name}")
    kw = dict(path=name, alias=args.alias or (name if is_ref else Path(name).name), n_ctx=args.ctx_size,
              parallel=args.parallel, n_threads=args.threads, chat_format=args.chat_template, pull=args.pull,
              backend=args.backend, n_gpu_layers=args.n_gpu_layers, device=args.device)
    if getattr(args, "batch_size", None) and "n_batch" in {f.name for f in dataclasses.fields(ModelSpec)}:
        kw["n_batch"] = args.batch_size  # -b, where the server batches
    if getattr(args, "batching", None):
        kw["batching"] = args.batching
    kw["mmap"] = getattr(args, "mmap", None)
    spec = ModelSpec(**kw)
    return [for_replicas(spec)], args.host or "127.0.0.1", int(args.port or 8080)


def main(args, specs_from_args, limits_from_args) -> int:
    """Deploy on the running cluster at --ray-address ($RAY_ADDRESS, else a local `ray start --head`),
    serve until SIGINT/SIGTERM, then delete the application (the cluster keeps running)."""
    import signal
    import threading

    from engine.server.auth import read_keys

    try:
        specs, host, port = specs_for_ray(args, specs_from_args)
        keys = read_keys(args.api_key, args.api_key_file)
        limits = dataclasses.asdict(limits_from_args(args))
        autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
        budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb else None
        options = dict(replicas=None if autoscale else (args.replicas or 1), autoscale=autoscale,
                       num_cpus=args.threads, graceful_shutdown_s=args.timeout_graceful_shutdown)
        if args.replicas is not None and autoscale is not None:
            raise ValueError("--replicas and --autoscale exclude each other")
        deployment_options(specs, limits, **options)  # bad values are reported before Ray is reached
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        print(f"error: no Ray cluster at {address} ({e}); start one with `ray start --head` "
              "or name it with --ray-address / RAY_ADDRESS", file=sys.stderr)
        return 1
    try:
        app = application(specs, keys, limits, budget, **options)
        serve.start(http_options=HTTPOptions(host=host, port=port))
        serve.run(app, name=APP_NAME, route_prefix="/")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        ray.shutdown()
        return 1
    how = f"autoscaling {autoscale[0]}..{autoscale[1]} replicas" if autoscale else f"{args.replicas or 1} replicas"
    print(f"serving {', '.join(s['alias'] for s in specs)} on http://{host}:{port} (Ray Serve at {address}, {how})",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    try:
        serve.delete(APP_NAME)
    finally:
        ray.shutdown()
    return 0
