"""The command line as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.engine import Engine


def run(*args, input=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=timeout)


def test_help_is_fast_and_lists_commands():
    r = run("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("run", "generate", "bench", "inspect"))
    for cmd in ("run", "generate", "bench", "inspect"):
        assert run(cmd, "--help").returncode == 0


def test_help_does_not_import_numba():
    code = "import sys; from engine.cli import build_parser; build_parser(); print('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_generate_with_a_seed_is_reproducible(smollm2_path):
    args = ("generate", "-m", smollm2_path, "-p", "Once upon a time", "-n", 16, "--temp", 0.8, "--seed", 42, "-t", 2)
    a, b = run(*args), run(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and len(a.stdout.strip()) > 0


def test_run_one_shot_and_piped_stdin(smollm2_path):
    r = run("run", "-m", smollm2_path, "-n", 16, "--temp", 0, "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    # the same greedy answer the library gives (llama.cpp's too: SmolLM2-135M Q4_1 is not sure of Paris)
    eng = Engine.load(smollm2_path, n_ctx=512, n_threads=2)
    expected = eng.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0)
    assert r.stdout.strip() == expected.text.strip() != ""
    r = run("run", "-m", smollm2_path, "-n", 8, "--temp", 0, "Repeat this word:", input="banana\n")
    assert r.returncode == 0 and r.stdout.strip()


def test_run_repl_reads_turns_until_bye(smollm2_path, monkeypatch, capsys):
    import io

    from engine.cli import main

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("What is 2+2?\nAnd 3+3?\n/bye\n"))
    assert main(["run", "-m", str(smollm2_path), "-n", "8", "--temp", "0", "-t", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("> ") >= 3  # three prompts shown: two answered turns, then /bye


def test_bad_model_file_is_one_clean_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(10))
    r = run("generate", "-m", bad, "-p", "hi")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_bench_json(smollm2_path):
    r = run("bench", "-m", smollm2_path, "-p", 16, "-n", 4, "-r", 2, "-t", 2, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("pp", "tg"):
        assert out[key]["mean"] > 0 and out[key]["std"] >= 0


def test_bench_depth_starts_each_run_from_a_filled_context(smollm2_path, monkeypatch):
    """`bench -d N` (llama-bench's -d): every timed pp pass and tg step runs on a cache already holding N
    tokens, evaluated as a prompt beforehand, and the report names the depth."""
    import argparse

    from engine.commands import bench

    eng = Engine.load(smollm2_path, n_ctx=256, n_threads=2)
    seen = []  # (tokens in this call, positions already in the cache)
    forward = eng.model.forward

    def spy(tokens, cache, *a, **kw):
        seen.append((len(tokens), cache.n_past))
        return forward(tokens, cache, *a, **kw)

    monkeypatch.setattr(eng.model, "forward", spy)
    out = bench.bench_engine(eng, argparse.Namespace(n_prompt=5, n_gen=3, repetitions=2, n_depth=12))
    assert out["pp"]["n_tokens"] == 5 and out["tg"]["n_tokens"] == 3
    pp = [past for n, past in seen if n == 5]
    tg = [past for n, past in seen if n == 1]
    assert pp == [12] * 3                       # the warm-up and the two timed passes
    assert tg == [12, 13, 14] * 3               # each run's three steps, from the filled context
    assert [n for n, past in seen if past == 0] == [12] * 6   # the depth, evaluated as one prompt each run
    r = run("bench", "-m", smollm2_path, "-p", 0, "-n", 2, "-r", 1, "-t", 2, "-d", 8)
    assert r.returncode == 0 and "tg2 @ d8" in r.stdout, r.stderr
    r = run("bench", "-m", smollm2_path, "-n", 2, "-d", -1)
    assert r.returncode != 0 and "n-depth" in r.stderr
