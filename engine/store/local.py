"""The local store: content-addressed blobs, one manifest per ref, readable file names, locks.

    $GGUFPY_HOME (default: the user's cache dir, e.g. ~/.cache/ggufpy)
      blobs/sha256-<hex>              every file once, named by its content (as Ollama names them)
      refs/<key>.json                 one per ref: its files (name -> sha256), revision, when pulled
      models/<key>/<file name>        links to the blobs under the names the source gave them, so a
                                      split model's parts sit side by side as the GGUF reader expects
      partial/                        downloads in flight (resumed by the next pull), verified files
                                      waiting to be committed
      locks/                          one file lock per ref and per download

Two names for one file (hf://... and https://... of the same GGUF) share one blob. Nothing reaches
blobs/ before its sha256 checked out; a ref is written only when all its blobs are in place, and a ref
and its blobs are committed (and garbage-collected by `rm`) under one store-wide lock, so a pull and a
removal at the same time never leave a ref pointing at a missing blob.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST_VERSION = 1


class StoreError(RuntimeError):
    """A store operation that cannot be done; the message says why and what to do."""


class Unreachable(StoreError):
    """The source could not be reached (no network, offline mode); `--pull newer` then keeps the pulled copy."""


class ChecksumError(StoreError):
    """A download whose sha256 is not the one its source announced (the file was removed)."""


def default_home() -> Path:
    env = os.environ.get("GGUFPY_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ggufpy", appauthor=False))


@dataclass
class LocalModel:
    """A pulled ref: its manifest and the path to open (the model file, first part if split)."""

    manifest: dict
    path: Path

    @property
    def ref(self) -> str:
        return self.manifest["ref"]

    @property
    def revision(self) -> str | None:
        return self.manifest.get("revision")

    def file(self, role: str) -> Path | None:
        """The path of the first file of a role ("template", "params", "license", ...), if pulled."""
        for f in self.manifest["files"]:
            if f.get("role") == role:
                return self.path.parent / f["name"]
        return None


class Store:
    def __init__(self, home: Path | str | None = None):
        self.home = Path(home) if home else default_home()
        self.blobs, self.refs, self.models = self.home / "blobs", self.home / "refs", self.home / "models"
        self.partial, self.locks = self.home / "partial", self.home / "locks"

    # --- locks
    def lock(self, name: str):
        """An inter-process lock (filelock) named by a ref key or a download key."""
        from filelock import FileLock

        path = self.locks / (name.replace("/", "%") + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def store_lock(self):
        return self.lock("_store")

    # --- blobs
    def blob_path(self, sha256: str) -> Path:
        return self.blobs / f"sha256-{sha256}"

    def verified_path(self, sha256: str) -> Path:
        """A downloaded, checked file waiting for its ref's commit."""
        return self.partial / f"sha256-{sha256}"

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file() or self.verified_path(sha256).is_file()

    def accept(self, tmp: Path, digest: str, expected: str | None, what: str) -> str:
        """Check a finished download against the sha256 its source announced; keep it as verified, or
        remove it and raise `ChecksumError`."""
        if expected and digest != expected:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(f"{what}: the download's sha256 is {digest}, its source says {expected}; "
                                f"the file was removed and nothing was stored")
        target = self.verified_path(digest)
        if self.has_blob(digest):
            tmp.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        return digest

    # --- refs
    def manifest_path(self, key: str) -> Path:
        return self.refs / f"{key}.json"

    def read_manifest(self, key: str) -> dict | None:
        try:
            return json.loads(self.manifest_path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def find(self, key: str) -> LocalModel | None:
        """The pulled ref under `key`, if every one of its blobs is present (links are re-made if lost)."""
        m = self.read_manifest(key)
        if m is None or not all(self.blob_path(f["sha256"]).is_file() for f in m["files"]):
            return None
        folder = self.models / key
        for f in m["files"]:
            self._link(self.blob_path(f["sha256"]), folder / f["name"])
        return LocalModel(m, folder / m["model"])

    def commit(self, key: str, manifest: dict) -> LocalModel:
        """Move the ref's verified files into blobs/, link them under their names, write the manifest."""
        manifest = {"version": MANIFEST_VERSION, **manifest, "pulled": time.time()}
        folder = self.models / key
        with self.store_lock():
            for f in manifest["files"]:
                blob, verified = self.blob_path(f["sha256"]), self.verified_path(f["sha256"])
                if not blob.is_file():
                    if not verified.is_file():
                        raise StoreError(f"{f['name']}: blob sha256-{f['sha256']} vanished before the commit")
                    blob.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(verified, blob)
                else:
                    verified.unlink(missing_ok=True)
            if folder.exists():  # a re-pull: the names may have changed
                shutil.rmtree(folder)
            for f in manifest["files"]:
                self._link(self.blob_path(f["sha256"]), folder / f["name"])
            path = self.manifest_path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, path)
        return LocalModel(manifest, folder / manifest["model"])

    @staticmethod
    def _link(blob: Path, name: Path):
        """`name` -> `blob`: a relative symlink, else a hard link, else a copy (filesystems without links)."""
        if name.is_file() and os.path.samefile(name, blob):
            return
        name.parent.mkdir(parents=True, exist_ok=True)
        name.unlink(missing_ok=True)
        try:
            name.symlink_to(os.path.relpath(blob, name.parent))
        except OSError:
            try:
                os.link(blob, name)
            except OSError:
                shutil.copyfile(blob, name)

    def manifests(self) -> list[dict]:
        out = []
        for p in sorted(self.refs.rglob("*.json")) if self.refs.exists() else []:
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def remove(self, key: str) -> list[str]:
        """Remove a ref; then every blob no ref names any more. Returns the removed blobs' names."""
        with self.store_lock():
            path = self.manifest_path(key)
            if not path.exists():
                raise StoreError(f"{key} is not in the store")
            path.unlink()
            shutil.rmtree(self.models / key, ignore_errors=True)
            for d in (path.parent, (self.models / key).parent):  # drop empty parent folders
                while d not in (self.refs, self.models) and d.exists() and not any(d.iterdir()):
                    d.rmdir()
                    d = d.parent
            return self._collect_garbage()

    def _collect_garbage(self) -> list[str]:
        used = {f["sha256"] for m in self.manifests() for f in m["files"]}
        removed = []
        for blob in sorted(self.blobs.glob("sha256-*")) if self.blobs.exists() else []:
            if blob.name[len("sha256-"):] not in used:
                blob.unlink()
                removed.append(blob.name)
        return removed
