"""`serve --ray` (engine/server/ray_serve.py): the server as Ray Serve replicas on a local Ray head.

The head is a real `ray start --head` (2 CPUs, a small object store, its own temp dir and ports) in a
session of its own, so teardown ends exactly its processes; the deployment is the real CLI,
`python -m engine serve --ray --replicas 2`, serving SmolLM2. The clients are `openai` with timeouts and
no retries, so a request that hangs fails the test and an error is seen as the server sent it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
try:
    import ray
    import ray.serve  # noqa: F401
except ImportError:
    if os.environ.get("GGUFPY_REQUIRE_MODELS") == "1":  # CI (.ci/run) installs the extra: never a skip there
        raise
    pytest.skip("Ray Serve is an optional extra, not installed (pip install '.[ray]')", allow_module_level=True)
openai = pytest.importorskip("openai")

from engine.server import ray_serve  # noqa: E402  (imports ray)

ROOT = Path(__file__).resolve().parent.parent
ALIAS = "smollm2"
SLOTS = 2  # -np per replica: each takes 2 x SLOTS requests from the proxy (deployment_options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # the replicas import `engine` whether or not the package is installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _session_pids(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _end_session(sid: int, patience: float = 10.0):
    """SIGTERM, then SIGKILL, every process of the head's session (GCS, raylet, workers, replicas)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        end = time.monotonic() + patience
        while _session_pids(sid) and time.monotonic() < end:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def head():
    """A local Ray head; yields its address."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    address = f"127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--num-cpus", "2", "--object-store-memory", str(80 * 2**20), "--temp-dir", temp,
           "--include-dashboard", "false", "--disable-usage-stats", "--ray-client-server-port", str(free_port()),
           "--dashboard-agent-listen-port", str(free_port())]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out, _ = proc.communicate(timeout=120)
    try:
        assert proc.returncode == 0, out
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        _end_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)


class Deployment:
    def __init__(self, head: str, model: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--ray", "--ray-address", head, "-m", str(model), "-a", ALIAS,
             "-c", "1024", "-np", str(SLOTS), "-t", "1", "--port", str(self.port), *extra],
            cwd=ROOT, env=_env(), stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        while "serving " not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve --ray did not come up: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def client(self, timeout: float = 120, session: str | None = None):
        headers = {"x-session-id": session} if session else None
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="none", timeout=timeout, max_retries=0,
                             default_headers=headers)

    def metric(self, name: str, session: str) -> float:
        req = urllib.request.Request(f"{self.base}/metrics", headers={"x-session-id": session})
        with urllib.request.urlopen(req, timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"ggufpy:{name} "):
                    return float(line.split()[1])
        raise AssertionError(f"no {name} in /metrics")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the CLI deletes its application and leaves
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def deployed(head, smollm2_path):
    d = Deployment(head, smollm2_path, "--replicas", "2")
    try:
        yield d
    finally:
        rc = d.stop()
        assert rc == 0, d.output()


def replicas() -> dict[str, int]:
    """The live replicas of the application, unique id -> PID, from the GCS actor table."""
    from ray._private import state

    out = {}
    for a in state.actors(actor_state_name="ALIVE").values():
        if a["ActorClassName"] == f"ServeReplica:{ray_serve.APP_NAME}:EngineServer":
            out[a["Name"].rsplit("#", 1)[-1]] = a["Pid"]
    return out


def running_replicas() -> int:
    """Replicas Ray Serve routes to (constructed: their model is loaded)."""
    from ray import serve

    app = serve.status().applications.get(ray_serve.APP_NAME)
    return app.deployments["EngineServer"].replica_states.get("RUNNING", 0) if app else 0


# --- without a cluster


def test_rendezvous_rank_is_stable_and_a_leaving_replica_moves_only_its_keys():
    ids = ["r1", "r2", "r3", "r4"]
    keys = [f"conversation-{i}" for i in range(200)]
    first = {k: ray_serve.rendezvous_rank(k, ids)[0] for k in keys}
    assert first == {k: ray_serve.rendezvous_rank(k, list(reversed(ids)))[0] for k in keys}  # order-free
    assert len(set(first.values())) == 4  # every replica gets conversations
    after = {k: ray_serve.rendezvous_rank(k, ["r1", "r2", "r4"])[0] for k in keys}
    assert {k for k in keys if after[k] != first[k]} == {k for k in keys if first[k] == "r3"}
    # the second choice of a key is where it goes when its first is full or gone
    assert all(after[k] == ray_serve.rendezvous_rank(k, ids)[1] for k in keys if first[k] == "r3")


def test_router_ranks_one_replica_per_rank_in_the_sessions_order():
    """What ConversationRouter hands Ray's routing loop (which tries each rank in turn, skipping a full
    replica): a session's replicas one per rank in rendezvous order; no session: two at random, one rank."""
    from types import SimpleNamespace as NS

    reps = [NS(replica_id=NS(unique_id=u)) for u in ("a1", "b2", "c3")]

    def pending(session):
        return NS(metadata=NS(session_id=session), routing_context=NS(should_backoff=False))

    def choose(p):
        return asyncio.run(ray_serve.ConversationRouter.choose_replicas(None, reps, p))

    p = pending("conversation-7")
    ranks = choose(p)
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks] == \
        [[u] for u in ray_serve.rendezvous_rank("conversation-7", ["a1", "b2", "c3"])]
    assert p.routing_context.should_backoff  # all ranks tried: Ray backs off, no busy loop
    assert choose(pending("conversation-7")) == ranks
    ranks = choose(pending(""))
    assert len(ranks) == 1 and len(ranks[0]) == 2 and len({id(r) for r in ranks[0]}) == 2
    assert choose(None) and choose(pending("x")) and not asyncio.run(
        ray_serve.ConversationRouter.choose_replicas(None, [], pending("x")))


def test_deployment_options_replicas_autoscaling_and_gpus():
    cpu = [{"path": "m.gguf", "alias": "m", "parallel": 3, "backend": "cpu"}]
    o = ray_serve.deployment_options(cpu, {"max_queue": 10}, replicas=3, cluster_gpus=8)
    assert o["num_replicas"] == 3 and o["ray_actor_options"] == {"num_cpus": 1.0}  # cpu: no GPU even if there are
    assert o["max_ongoing_requests"] == 6 and o["max_queued_requests"] == 10
    assert o["request_router_config"].request_router_class == "engine.server.ray_serve.ConversationRouter"
    auto = [dict(cpu[0], backend="auto")]
    assert "num_gpus" not in ray_serve.deployment_options(auto, {}, cluster_gpus=0)["ray_actor_options"]
    assert ray_serve.deployment_options(auto, {}, cluster_gpus=2)["ray_actor_options"]["num_gpus"] == 1
    cuda = [dict(cpu[0], backend="cuda")]
    o = ray_serve.deployment_options(cuda, {"max_concurrent": 5}, autoscale=(0, 4), num_cpus=8)
    assert o["ray_actor_options"] == {"num_cpus": 8.0, "num_gpus": 1} and "num_replicas" not in o
    a = o["autoscaling_config"]
    assert (a.min_replicas, a.max_replicas, a.initial_replicas, a.target_ongoing_requests) == (0, 4, 1, 5)
    with pytest.raises(ValueError, match="exclude"):
        ray_serve.deployment_options(cpu, {}, replicas=2, autoscale=(1, 2))
    for bad in ("3", "a:b", "2:1", "0:0", "-1:2"):
        with pytest.raises(ValueError, match="MIN:MAX"):
            ray_serve.parse_autoscale(bad)


def test_build_app_takes_the_serve_config_file(tmp_path, smollm2_path):
    """The RayService / `serve run` path: `import_path: engine.server.ray_serve:build_app` with the JSON of
    `serve --config` (by path), the replica options and limits beside it."""
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"host": "0.0.0.0", "port": 9, "models": [
        {"model": str(smollm2_path), "model_alias": "smol", "parallel": 3, "backend": "cpu", "use_mmap": False},
        {"model": "hf://org/repo:Q4_K_M", "model_alias": "other"}]}))
    keys = tmp_path / "keys"
    keys.write_text("# ours\nk1\n")
    app = ray_serve.build_app({"config": str(cfg), "autoscale": "1:3", "max_queue": 5, "n_ctx": 2048,
                               "api_key_file": str(keys), "max_body_size": "1M"})
    d = app._bound_deployment  # the bound deployment's options and constructor arguments
    specs, api_keys, limits, _ = d.init_args
    assert [(s["alias"], s["path"], s["n_ctx"], s["parallel"]) for s in specs] == [
        ("smol", str(smollm2_path), 2048, 3), ("other", "hf://org/repo:Q4_K_M", 2048, 1)]
    assert [s["mmap"] for s in specs] == [False, None]  # llama-cpp-python's use_mmap, per model
    assert api_keys == ["k1"] and limits["max_queue"] == 5 and limits["max_body_bytes"] == 2**20
    assert d.max_ongoing_requests == 6 and d.max_queued_requests == 5 and d.ray_actor_options == {"num_cpus": 1.0}
    a = d._deployment_config.autoscaling_config
    assert (a.min_replicas, a.max_replicas) == (1, 3)
    two = ray_serve.build_app({"models": [{"model": str(smollm2_path)}], "replicas": 2, "use_mmap": True})
    assert two._bound_deployment.num_replicas == 2 and two._bound_deployment.init_args[0][0]["mmap"] is True
    with pytest.raises(ValueError, match="no model"):
        ray_serve.build_app({"replicas": 2})


def test_bad_flags_are_reported_before_ray_is_reached(smollm2_path):
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--ray", "--ray-address", "127.0.0.1:1",
                        "-m", str(smollm2_path), "--replicas", "2", "--autoscale", "1:3"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "exclude each other" in r.stderr
    r = subprocess.run([sys.executable, "-m", "engine", "serve", "--ray", "-m", "no/such/model.gguf"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "not found" in r.stderr


# --- on the local head


def test_a_conversation_goes_back_to_the_replica_that_served_it(deployed):
    live = replicas()
    assert len(live) == 2 and running_replicas() == 2
    # two conversations whose ids rank different replicas first (the router's own ranking)
    sessions, firsts = [], set()
    for i in range(100):
        first = ray_serve.rendezvous_rank(f"conv-{i}", list(live))[0]
        if first not in firsts:
            firsts.add(first)
            sessions.append(f"conv-{i}")
    a, b = sessions
    before = {s: deployed.metric("requests_total", s) for s in (a, b)}
    chat = deployed.client(session=a)
    msgs = [{"role": "user", "content": "Name a colour."}]
    for turn in range(3):
        r = chat.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=8, temperature=0)
        msgs += [{"role": "assistant", "content": r.choices[0].message.content},
                 {"role": "user", "content": "And another?"}]
    assert deployed.metric("requests_total", a) - before[a] == 3  # every turn on a's replica
    assert deployed.metric("requests_total", b) - before[b] == 0  # none on the other


def test_a_killed_replica_loses_no_request_silently_and_the_deployment_recovers(deployed):
    started = time.monotonic()
    victims = replicas()
    assert len(victims) == 2
    results: dict[int, tuple] = {}
    first_tokens = threading.Semaphore(0)

    def ask(i: int):
        client = deployed.client(timeout=120)
        msgs = [{"role": "user", "content": f"Tell me a short story about the number {i}."}]
        try:
            if i % 2:
                text, finish = "", None
                for chunk in client.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=48,
                                                            temperature=0, stream=True):
                    if chunk.choices:
                        if chunk.choices[0].delta.content:
                            if not text:
                                first_tokens.release()
                            text += chunk.choices[0].delta.content
                        finish = chunk.choices[0].finish_reason or finish
            else:
                r = client.chat.completions.create(model=ALIAS, messages=msgs, max_tokens=48, temperature=0)
                text, finish = r.choices[0].message.content, r.choices[0].finish_reason
            results[i] = ("ok", text, finish)
        except openai.APITimeoutError as e:  # a hang: what must not happen
            results[i] = ("timeout", str(e))
        except openai.APIStatusError as e:  # an error response
            results[i] = ("status", e.status_code)
        except openai.APIConnectionError as e:  # a stream cut when its replica died
            results[i] = ("cut", str(e))

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    for _ in range(3):  # mid-run: streams are decoding on both replicas
        assert first_tokens.acquire(timeout=120), "no stream started"
    victim, pid = next(iter(victims.items()))
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert len(results) == 16
    kinds = [r[0] for r in results.values()]
    assert "timeout" not in kinds, results
    ok = [r for r in results.values() if r[0] == "ok"]
    failed = [r for r in results.values() if r[0] != "ok"]
    # a completed request is complete: text and a finish reason (a cut stream raises, it never just ends)
    assert all(r[1] and r[2] in ("stop", "length") for r in ok), results
    assert all(r[0] == "cut" or r[1] >= 500 for r in failed), results
    # only what the dead replica held fails (at most its 2 x SLOTS); the queued ones went to the live one
    assert 1 <= len(failed) <= 2 * SLOTS, results

    deadline = time.monotonic() + 120  # Ray starts a replacement replica
    while time.monotonic() < deadline:
        live = replicas()
        if len(live) == 2 and victim not in live and pid not in live.values() and running_replicas() == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the deployment did not recover: {replicas()}")
    client = deployed.client(timeout=120)
    answers = [client.chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": f"Say {w}."}],
                                              max_tokens=8, temperature=0) for w in ("hello", "bye", "yes", "no")]
    assert all(a.choices[0].message.content for a in answers)
    print(f"16 requests, kill, recovery and 4 more: {time.monotonic() - started:.1f} s; "
          f"{len(ok)} completed, {len(failed)} errors ({sorted(r[0] for r in failed)})")
