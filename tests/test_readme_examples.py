"""Docs that run: every ```python block of README.md (and docs/*.md) is executed exactly as written.

Each block runs in its own interpreter with its working directory at a temporary folder where the
test models are linked under their own file names, so an example naming
"SmolLM2-135M-Instruct.Q4_1.gguf" finds the fetched model and the example text stays verbatim.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    """(id "FILE:LINE", code) for every fenced python block of the docs."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return out


BLOCKS = python_blocks()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 3, [b[0] for b in BLOCKS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2_path, gemma3_path) -> Path:
    """A folder holding the test models under their own names (symlinks), as a user's would."""
    d = tmp_path_factory.mktemp("docs-cwd")
    for model in (smollm2_path, gemma3_path):
        (d / model.name).symlink_to(model)
    return d


@pytest.mark.parametrize("code", [b[1] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_python_example_runs_as_written(code, model_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], cwd=model_dir, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"example failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
