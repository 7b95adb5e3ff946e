"""API keys: with --api-key (several, comma-separated) and/or --api-key-file, every route but /health
needs one of them; keys are compared in constant time; no key, right or wrong, appears in a
response or in the server's output (engine/server/auth.py)."""

from __future__ import annotations

import json
import statistics
import time

import pytest

from engine.server.auth import APIKeys, read_keys
from live_server import LiveServer, raw_exchange, status_of, tiny_model

K1 = "sk-first-0123456789abcdefghijklmnop"
K2 = "sk-second-from-the-file-qrstuvwxyz"
K3 = "sk-third-ÿ-non-ascii-key-98765"
WRONG = [K1[:-1] + "X", K2.upper(), "sk-", "", "Bearer " + K1, K1 + "!", K1 * 2]  # (HTTP strips trailing spaces)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    keyfile = d / "keys.txt"
    keyfile.write_text(f"# the team's keys\n{K2}\n\n  {K3}  \n", encoding="utf-8")
    s = LiveServer("-m", str(tiny_model(d / "tiny.gguf")), "--api-key", f"{K1}", "--api-key-file", str(keyfile))
    yield s
    s.stop()


def routes(server) -> list[tuple[str, str]]:
    status, body, _ = server.request("GET", "/openapi.json", headers={"Authorization": f"Bearer {K1}"})
    assert status == 200
    doc = json.loads(body)
    out = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]
    assert len(out) >= 17
    return out + [("GET", "/openapi.json"), ("GET", "/no/such/route"), ("DELETE", "/v1/models")]


def call(server, method, path, headers):
    body = b"{}" if method == "POST" else None
    return server.request(method, path, body, headers={"Authorization": "", **headers})


def test_health_needs_no_key(server):
    assert server.request("GET", "/health", headers={"Authorization": ""})[0] == 200


def test_every_other_route_refuses_a_missing_or_wrong_key(server):
    for method, path in routes(server):
        if path == "/health":
            continue
        for headers in [{}] + [{"Authorization": f"Bearer {w}"} for w in WRONG] + [{"X-Api-Key": WRONG[0]}]:
            status, body, _ = call(server, method, path, headers)
            assert status == 401, (method, path, headers, status)
            err = json.loads(body)["error"]
            assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"


def test_each_key_opens_every_route_by_either_header(server):
    for method, path in routes(server):
        for key in (K1, K2, K3):
            for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": f"bearer {key}"}, {"X-Api-Key": key}):
                status, _, _ = call(server, method, path, headers)
                assert status != 401, (method, path, headers)


def test_a_key_that_is_not_utf8_is_a_401_not_a_crash(server):
    reply = raw_exchange(server.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80"
                                      b"\r\nConnection: close\r\n\r\n")
    assert status_of(reply) == 401


def test_no_key_appears_in_responses_or_the_log(server):
    seen = []
    for path in ("/props", "/metrics", "/v1/models", "/no/such/route"):
        seen.append(server.request("GET", path, headers={"Authorization": f"Bearer {K1}"})[1])
    for w in WRONG:
        seen.append(server.request("GET", "/v1/models", headers={"Authorization": f"Bearer {w}"})[1])
    seen.append(server.request("POST", "/v1/chat/completions", json.dumps({"messages": 5}).encode(),
                               headers={"Authorization": f"Bearer {K2}"})[1])
    text = "\n".join(seen) + "\n" + server.output()
    for secret in (K1, K2, K3, *[w for w in WRONG if len(w) > 8]):
        assert secret not in text, secret
        assert secret.encode().hex() not in text


def test_keys_from_both_flags_and_a_file():
    assert read_keys("a, b,,", None) == ["a", "b"]
    assert read_keys(None, None) == [] and not APIKeys([])
    with pytest.raises(ValueError, match="holds no key"):
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("# only a comment\n\n")
            f.flush()
            read_keys(None, f.name)
    with pytest.raises(ValueError, match="cannot read the API key file"):
        read_keys(None, "/nonexistent/keys.txt")
    keys = APIKeys([K1, K2])
    assert keys.allows(K1) and keys.allows(K2) and not keys.allows(None) and not keys.allows(K3)
    assert K1 not in repr(keys) and K1 not in str(keys.__dict__)


def _time_ns(keys: APIKeys, candidate: str, n: int = 200) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        keys.allows(candidate)
    return (time.perf_counter_ns() - t0) / n


def test_the_comparison_takes_the_same_time_however_close_the_guess():
    """A guess sharing all but the last character with a key, one sharing half, the key itself, one
    matching the last of many keys: the same time as a guess sharing nothing. Measured interleaved
    (each round times both back to back), so a busy shared machine's drift cancels out."""
    keys = APIKeys([SECRET] + OTHERS)
    for guess in (SECRET[:-1] + "r", "sk-" + "q" * 30, SECRET, OTHERS[-1]):
        ratio = _ratio(keys, guess)
        assert 0.7 < ratio < 1.4, (guess[-4:], len(guess), ratio)


def test_the_timing_check_catches_a_comparison_that_stops_at_the_first_match():
    """The check above can fail: a comparison that returns at the first matching key is caught."""
    import hashlib

    class StopsEarly(APIKeys):
        def allows(self, key):
            given = hashlib.sha256((key or "").encode()).digest()
            return any(given == k for k in self._keys)

    assert _ratio(StopsEarly([SECRET] + OTHERS), SECRET) < 0.3


SECRET = "sk-" + "q" * 61
OTHERS = [f"sk-other-{i:03d}-" + "z" * 50 for i in range(199)]  # many keys: an early exit would show plainly


def _ratio(keys: APIKeys, guess: str) -> float:
    return statistics.median(_time_ns(keys, guess) / _time_ns(keys, "x" * 64) for _ in range(21))
