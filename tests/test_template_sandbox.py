"""Chat templates come with model files from strangers: the published escapes are refused (the
llama-cpp-python one, CVE-2024-34359, and the usual Jinja SSTI walks), a template that loops is
stopped within 2 s, one that renders or builds gigabytes is stopped at its bound, each with a
ChatTemplateError that says why, and the next render works (engine/template_guard.py)."""

from __future__ import annotations

import json
import time

import pytest

from engine.chat_template import ChatTemplate, ChatTemplateError

MSGS = [{"role": "user", "content": "hi"}]

ESCAPES = {
    # CVE-2024-34359 (llama-cpp-python < 0.2.72): the template reference's context reaches os
    "cve_2024_34359": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch {canary}').read() }}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os.system('touch {canary}') }}",
    "joiner_globals": "{{ joiner.__init__.__globals__['os'].system('touch {canary}') }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].system('touch {canary}') }}",
    "namespace_globals": "{% set n = namespace() %}{{ n.__init__.__globals__['sys'].modules['os'].system('touch {canary}') }}",
    "our_global_fn": "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch {canary}') }}",
    "strftime_globals": "{{ strftime_now.__globals__['__builtins__']['open']('{canary}', 'w').write('x') }}",
    "subclasses": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}"
                  "{{ c(['touch', '{canary}']) }}{% endif %}{% endfor %}",
    "tuple_base": "{{ ().__class__.__base__.__subclasses__() }}",
    "attr_filter": "{{ (messages | attr('__class__')) | attr('__subclasses__') }}",
    "format_string": "{{ '{0.__class__.__mro__[1].__subclasses__}'.format('') }}",
    "mutating_messages": "{{ messages.append({'role': 'system', 'content': 'injected'}) }}{{ messages | length }}",
    "bare_open": "{{ open('{canary}', 'w') }}",
    "bare_import": "{{ __import__('os').system('touch {canary}') }}",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_attempts_are_refused_with_a_clear_error(name, tmp_path):
    canary = tmp_path / "pwned"
    src = ESCAPES[name].replace("{canary}", str(canary))
    with pytest.raises(ChatTemplateError) as e:
        ChatTemplate(src).render(MSGS)
    msg = str(e.value)
    assert msg.startswith("chat template") and any(
        w in msg for w in ("unsafe", "sandbox", "undefined", "no attribute")), msg
    assert not canary.exists()


def test_a_looping_template_is_stopped_within_two_seconds():
    t = ChatTemplate("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x")
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="did not finish within 1 s"):
        t.render(MSGS)
    assert time.monotonic() - start < 2.0
    assert ChatTemplate.from_name("chatml").render(MSGS).startswith("<|im_start|>user")  # a fresh renderer


@pytest.mark.parametrize("src,what", [
    ("{{ (9 ** 999999999) > 1 }}", "did not finish"),                   # a number too large to compute
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),  # unbounded recursion
])
def test_runaway_computation_is_stopped(src, what):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=what):
        ChatTemplate(src).render(MSGS)
    assert time.monotonic() - start < 2.0


def test_an_oversized_render_is_stopped_at_its_bound():
    """~100 MB of output, streamed in small pieces: stopped once past max_render_chars (8 Mi)."""
    t = ChatTemplate("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}")
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=f"output exceeds {ChatTemplate.max_render_chars} characters"):
        t.render(MSGS)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("src", [
    "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "{{ ('x' * 10 ** 11) | length }}",
])
def test_a_memory_bomb_is_stopped_by_the_renderers_memory_bound(src):
    """Doubling a string 40 times (8 TiB) or one 100 GB string: the renderer's address-space limit
    turns it into a clear error (or its time bound does), never the host's OOM killer."""
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match="memory|did not finish|too large"):
        ChatTemplate(src).render(MSGS)
    assert time.monotonic() - start < 5.0
    assert ChatTemplate.from_name("chatml").render(MSGS)  # the next render gets a working renderer


def test_constant_folding_at_load_runs_nothing():
    """Compiling a template folds constant expressions (Jinja runs `'x' * 10**10` at compile time):
    loading a template only parses it, so a bomb in a constant is the renderer's problem, bounded."""
    start = time.monotonic()
    t = ChatTemplate("{{ 'x' * 10 ** 11 }}")
    assert time.monotonic() - start < 1.0
    with pytest.raises(ChatTemplateError):
        t.render(MSGS)


def test_a_served_model_with_a_hostile_template_gets_errors_and_the_server_goes_on(tmp_path):
    import make_tiny_gguf

    from live_server import LiveServer

    path = make_tiny_gguf.write_gpt_oss(tmp_path / "evil.gguf", chat_template=ESCAPES["cycler_globals"].replace(
        "{canary}", str(tmp_path / "pwned")) + "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
    srv = LiveServer("-m", str(path))
    try:
        for _ in range(2):
            start = time.monotonic()
            status, body, _ = srv.post("/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})
            assert 400 <= status < 500 or status == 500, body
            err = json.loads(body)["error"]
            assert "chat template" in err["message"] and "unsafe" in err["message"], err
            assert time.monotonic() - start < 5
        status, body, _ = srv.post("/v1/completions", {"prompt": "plain text needs no template", "max_tokens": 2})
        assert status == 200, body
        assert srv.get("/health")[0] == 200 and not (tmp_path / "pwned").exists()
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()
