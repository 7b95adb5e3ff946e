"""Ollama's registry: ollama://[HOST/][NAMESPACE/]NAME[:TAG] and bare NAME:TAG.

The protocol is the OCI distribution API, a few HTTP calls (no library does Ollama's flavour of it):

    GET /v2/<namespace>/<name>/manifests/<tag>    Accept: application/vnd.docker.distribution.manifest.v2+json
        -> {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:...", "size": N},
                       {"mediaType": "application/vnd.ollama.image.template", ...}, ...]}
    GET /v2/<namespace>/<name>/blobs/<digest>     (usually a redirect to a CDN; Range works there)

The model layer is the GGUF; the template (a Go template), params (JSON: stop words, temperature, ...),
license and system layers are kept beside it for `show`. Every blob is named by its sha256, which the
store checks. `GGUFPY_OLLAMA_REGISTRY` (a base URL) replaces registry.ollama.ai, for mirrors and tests.
"""

from __future__ import annotations

import hashlib
import os
import sys

from .local import StoreError
from .refs import OLLAMA_HOST, Ref
from .remote import Context, Remote, RemoteFile

MANIFEST_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                   "application/vnd.oci.image.manifest.v1+json")
# layer media type -> (role, file name in the ref's folder); "{stem}" is NAME-TAG
LAYERS = {
    "application/vnd.ollama.image.model": ("model", "{stem}.gguf"),
    "application/vnd.ollama.image.template": ("template", "template"),
    "application/vnd.ollama.image.params": ("params", "params.json"),
    "application/vnd.ollama.image.license": ("license", "license"),
    "application/vnd.ollama.image.system": ("system", "system"),
}


def registry_url(host: str) -> str:
    if host == OLLAMA_HOST and os.environ.get("GGUFPY_OLLAMA_REGISTRY"):
        return os.environ["GGUFPY_OLLAMA_REGISTRY"].rstrip("/")
    local = host.split(":")[0] in ("localhost", "127.0.0.1")
    return f"{'http' if local else 'https'}://{host}"


def resolve(ref: Ref, ctx: Context) -> Remote:
    p = ref.parts
    base = f"{registry_url(p['host'])}/v2/{p['namespace']}/{p['name']}"
    url = f"{base}/manifests/{p['tag']}"
    r = ctx.client.get(url, headers={"Accept": MANIFEST_ACCEPT})
    if r.status_code == 404:
        raise StoreError(f"{ref}: no such model in {p['host']} ({url}: HTTP 404)")
    if r.status_code >= 400:
        raise StoreError(f"{ref}: {url}: HTTP {r.status_code}")
    try:
        manifest = r.json()
        layers = manifest["layers"]
    except (ValueError, KeyError, TypeError):
        raise StoreError(f"{ref}: {url} did not answer with a manifest") from None
    stem = f"{p['name']}-{p['tag']}"
    files, skipped = [], []
    for layer in layers:
        kind = LAYERS.get(layer.get("mediaType"))
        digest = str(layer.get("digest", ""))
        if kind is None:
            skipped.append(layer.get("mediaType"))
            continue
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise StoreError(f"{ref}: layer with a digest that is not sha256: {digest!r}")
        role, name = kind
        if any(f.role == role for f in files):
            skipped.append(layer.get("mediaType"))  # a second model layer is an adapter or projector
            continue
        sha = digest[len("sha256:"):]
        blob_url = f"{base}/blobs/{digest}"
        files.append(RemoteFile(name.format(stem=stem), _fetcher(ctx, blob_url, layer.get("size"), name), sha256=sha,
                                size=layer.get("size"), role=role))
    if not any(f.role == "model" for f in files):
        raise StoreError(f"{ref}: the manifest has no model layer")
    if skipped:
        print(f"{ref}: not fetched (not used by this engine): {', '.join(map(str, skipped))}", file=sys.stderr)
    revision = "sha256:" + hashlib.sha256(r.content).hexdigest()
    return Remote(revision=revision, files=lambda: files, origin=url)


def _fetcher(ctx: Context, url: str, size, name: str):
    return lambda dest: ctx.download(url, dest, expected_size=size, desc=name)
