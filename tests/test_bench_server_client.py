"""benchmarks/bench_server.py's client: it only receives while a stream runs and parses afterwards, so
each event's time must come from the block of bytes that completed it, whatever the HTTP chunking."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_server  # noqa: E402
from live_server import LiveServer, tiny_model  # noqa: E402


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _event(obj, sep=b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + sep


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_each_event_is_timed_by_the_block_that_completed_it():
    a, b, c = _event({"n": 1}), _event({"n": 2}, b"\r\n\r\n"), _event({"n": 3})
    # event 2 split over two HTTP chunks, and the chunk framing split over two blocks
    raw = HEAD + _chunked(a, b[:7], b[7:] + c)
    done = b"data: [DONE]\n\n"
    raw = raw[:-5] + _chunked(done)[:-5] + raw[-5:]
    cut1 = raw.index(a) + len(a) + 8             # past event 1, inside event 2's first piece
    cut2 = raw.index(c) + len(c) - 1             # before event 3's last byte
    arrivals = [(cut1, 0.1), (cut2, 0.2), (len(raw), 0.3)]
    events = bench_server.sse_events(raw, arrivals)
    assert [(t, e["n"]) for t, e in events] == [(0.1, 1), (0.2, 2), (0.3, 3)]


def test_a_plain_body_and_a_refusal():
    raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + _event({"x": 1}) + b": comment\n\n"
    assert [e for _, e in bench_server.sse_events(raw, [(len(raw), 0.5)])] == [{"x": 1}]
    with pytest.raises(ValueError, match="not a 200"):
        bench_server.sse_events(b"HTTP/1.1 503 Busy\r\n\r\n{}", [(22, 0.1)])


def test_a_server_that_exits_says_why():
    """A server that dies before it is ready (llama-cpp-python's without its extra: ModuleNotFoundError)
    is reported with the end of its stderr, not only its exit code."""
    cmd = [sys.executable, "-c", "import sys; print('starting', file=sys.stderr); "
           "sys.exit(\"ModuleNotFoundError: No module named 'sse_starlette'\")"]
    with pytest.raises(RuntimeError, match=r"exited with 1:\n  starting\n  ModuleNotFoundError: No module named"):
        with bench_server.started(cmd):
            pass


def test_a_real_stream_is_counted_and_timed(tmp_path):
    srv = LiveServer("-m", str(tiny_model(tmp_path / "tiny.gguf")), "--alias", "tiny")
    try:
        usage: dict = {}
        ttft, lat, n, last = bench_server.chat(srv.base, "tiny", 3, 8, usage)
        fixed = bench_server.chat(srv.base, "tiny", 4, 12, ignore_eos=True)  # the lone pairs' replies
    finally:
        srv.stop()
    assert n == usage["completion_tokens"] and 1 <= n <= 8
    assert 0 < ttft <= last <= lat
    assert fixed[2] == 12


def test_the_tg_probe_measures_on_each_line(tmp_path):
    """benchmarks/bench_probe.py: `engine bench`'s tg per line of stdin (a depth), in one process."""
    import subprocess

    model = tiny_model(tmp_path / "tiny.gguf")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_probe.py"), "-m", str(model), "-n", "4",
                          "-r", "1", "-t", "1"], input="0\n5\n", capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "ready"
    runs = [json.loads(line) for line in lines[1:]]
    assert [r["depth"] for r in runs] == [0, 5] and all(r["tg"] > 0 for r in runs)


def test_stream_costs_measures_each_server(capsys):
    """benchmarks/stream_costs.py: every server streams exactly the tokens asked (else it raises), and each
    row of the table has the three costs."""
    import stream_costs
    assert stream_costs.main(["--tokens", "6", "--rounds", "1", "--interval", "1"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and not ln.startswith("| server")]
    assert [r.split("|")[1].strip() for r in rows] == list(stream_costs.MODES)
    for r in rows:
        assert all(float(c) >= 0 for c in r.split("|")[2:5])


def test_stream_costs_against_passes_alone(capsys):
    """`--work pass`: the stand-in decode pass runs between tokens, on the compute thread, and each
    round compares the stream's speed at the client with the same passes run alone: a positive ratio
    and one per round. (Passes of 16 MB: with 2 MB ones, a few tokens could reach the client in one
    block, first and last at the same time.)"""
    import stream_costs
    assert stream_costs.main(["--tokens", "12", "--rounds", "2", "--work", "pass", "--pass-mb", "16",
                              "--modes", "asgi"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| asgi")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[2:6]]
    assert float(cells[0]) >= 0 and float(cells[1]) >= 0 and float(cells[2]) > 0
    assert len(cells[3].split(",")) == 2 and all(float(x) > 0 for x in cells[3].split(","))


def test_pass_gaps_times_each_kind_of_pass(tmp_path, capsys):
    """benchmarks/pass_gaps.py: tg, a streamed reply and one not streamed, each with its passes and
    gaps timed on the compute thread (positive times, the gap's parts within the gap)."""
    import pass_gaps
    model = tiny_model(tmp_path / "tiny.gguf")
    assert pass_gaps.main(["-m", str(model), "--rounds", "1", "--tokens", "6", "-t", "1", "-c", "128",
                            "--parallel", "1"]) == 0
    out = capsys.readouterr().out
    medians = out.split("medians of the rounds:")[1]
    rows = [ln for ln in medians.splitlines() if ln.startswith("| ") and not ln.startswith("| what")]
    assert [r.split("|")[1].strip() for r in rows] == ["`engine bench` tg", "streamed", "not streamed"]
    for r in rows:
        tps, pass_ms, gap, back, caller, wake = (float(c) for c in r.split("|")[2:8])
        assert tps > 0 and pass_ms > 0 and gap > 0 and min(back, caller, wake) >= 0
        assert back + caller + wake <= gap * 1.5 + 0.05  # medians of parts: about the median gap
