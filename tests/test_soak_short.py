"""The soak benchmark (benchmarks/soak_server.py) in short: 16 concurrent clients for 20 s against a
real server on the tiny model. No request fails, none gets another's response (echoed prompts and
deterministic replies are checked), the server is healthy after, and its memory after warm-up does
not grow by more than 10%. The 20-minute run and its numbers: benchmarks/README.md."""

from __future__ import annotations

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import soak_server  # noqa: E402
from live_server import LiveServer, tiny_model  # noqa: E402


def test_sixteen_clients_for_twenty_seconds(tmp_path):
    srv = LiveServer("-m", str(tiny_model(tmp_path / "tiny.gguf")), "-np", "2")
    out = io.StringIO()
    try:
        summary = soak_server.soak(srv, seconds=20, clients=16, interval=5, out=out)
    finally:
        srv.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4 and all("served" in line and "p95" in line and "RSS" in line for line in lines), lines
    assert summary["errors"] == 0 and summary["wrong"] == 0, summary["problems"]
    assert summary["served"] >= 200, summary  # 16 clients kept it busy
    assert summary["healthy_after"]
    assert summary["rss_growth"] <= 0.10, summary
