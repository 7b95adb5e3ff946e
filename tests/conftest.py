"""Shared fixtures: the real test models (fetched by tools/fetch_test_models.py).

Without the models the tests that need them are skipped, unless GGUFPY_REQUIRE_MODELS=1 (set by
.ci/run), where a missing model is a failure: CI must never pass by skipping conformance.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import fetch_test_models  # noqa: E402

REQUIRE_MODELS = os.environ.get("GGUFPY_REQUIRE_MODELS") == "1"


def _model(filename: str) -> Path:
    path = fetch_test_models.DEFAULT_DIR / filename
    if not path.exists():
        if REQUIRE_MODELS:
            pytest.fail(f"test model {path} is missing (run tools/fetch_test_models.py)")
        pytest.skip(f"test model {path.name} not fetched (python tools/fetch_test_models.py)")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model(fetch_test_models.SMOLLM2)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model(fetch_test_models.GEMMA3)


@pytest.fixture(scope="session", params=["smollm2", "gemma3"])
def real_model_path(request) -> Path:
    return _model(fetch_test_models.SMOLLM2 if request.param == "smollm2" else fetch_test_models.GEMMA3)


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python, the reference implementation (a test-only dependency, built by .ci/run)."""
    try:
        import llama_cpp as mod
    except ImportError:
        if REQUIRE_MODELS:
            pytest.fail("llama-cpp-python is not installed (see .ci/run)")
        pytest.skip("llama-cpp-python is not installed")
    return mod


@pytest.fixture(scope="session")
def tiny_gpt_oss_path(tmp_path_factory) -> Path:
    """A random-weight gpt-oss (tools/make_tiny_gguf.py) carrying gpt-oss's own chat template."""
    import make_tiny_gguf

    template = _model(fetch_test_models.GPT_OSS_TEMPLATE).read_text()
    return make_tiny_gguf.write_gpt_oss(tmp_path_factory.mktemp("gpt-oss") / "tiny-gpt-oss.gguf",
                                        chat_template=template)
