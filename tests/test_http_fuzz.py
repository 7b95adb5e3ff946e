"""Property-based HTTP fuzzing from the server's own OpenAPI document (Schemathesis).

A real `serve` process on the tiny random-weight model (tests/live_server.py). Every operation of
/openapi.json gets valid requests (generated from the published request models) and invalid ones
(Schemathesis's negative mode: wrong types, missing fields, values out of range). Each must get a
2xx, or a 4xx whose body is OpenAI's error JSON; never a 5xx, never a hang (every call has a
timeout), and the server must still answer a real chat afterwards. The generation is derandomized,
so a failure reproduces.
"""

from __future__ import annotations

import json
import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from live_server import LiveServer, tiny_model  # noqa: E402

# per POST operation and mode: 11 POSTs x 2 modes x 48 = 1,056 cases (+ the GETs, which take no input);
# a longer hunt: GGUFPY_FUZZ_EXAMPLES=500 python -m pytest tests/test_http_fuzz.py
EXAMPLES = int(os.environ.get("GGUFPY_FUZZ_EXAMPLES", 48))
CALL_TIMEOUT = 30  # seconds: a request still unanswered by then is a hang


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny.gguf")
    s = LiveServer("-m", str(path), "-n", "8", "-c", "512")  # -n: generated requests ask for any max_tokens
    yield s
    s.stop()


def _check(case, response) -> str | None:
    """None when the response is acceptable, else what is wrong with it."""
    if response.status_code >= 500:
        return f"server error {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        try:
            err = json.loads(response.text)["error"]
            assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return f"{response.status_code} without OpenAI's error JSON: {response.text[:300]!r}"
    return None


def test_every_operation_fuzzed_from_the_openapi_document(server):
    doc = json.loads(server.get("/openapi.json")[1])
    schema = schemathesis.openapi.from_dict(doc)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == sum(len(v) for v in doc["paths"].values()) >= 17  # every route is in the document
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    failures: list[str] = []

    for op in ops:
        has_body = op.method.upper() == "POST"  # a GET here takes nothing that could be made invalid
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_body else (GenerationMode.POSITIVE,):
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                try:
                    response = case.call(base_url=server.base, timeout=CALL_TIMEOUT)
                except Exception as e:  # noqa: BLE001 -- a timeout or a dropped connection is a finding
                    failures.append(f"{op.label} [{mode.value}]: {type(e).__name__}: {e}\n{case.as_curl_command()[:800]}")
                    return
                counts[op.label] = counts.get(op.label, 0) + 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                problem = _check(case, response)
                if problem:
                    failures.append(f"{op.label} [{mode.value}]: {problem}\n{case.as_curl_command()[:800]}")

            run()


    kinds = {f.splitlines()[0]: f for f in failures}  # one example of each distinct failure
    assert not failures, f"{len(failures)} bad responses:\n\n" + "\n\n".join(list(kinds.values())[:10])
    total = sum(counts.values())
    print(f"schemathesis: {total} cases over {len(ops)} operations; statuses {dict(sorted(statuses.items()))}")
    assert total >= min(1000, 22 * EXAMPLES), counts
    assert not any(s >= 500 for s in statuses)
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)  # both kinds reached
    # healthy after: the status route and a real generation
    assert server.get("/health")[0] == 200
    status, body, _ = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 4})
    assert status == 200 and json.loads(body)["choices"][0]["finish_reason"] in ("stop", "length")
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()
