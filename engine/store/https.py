"""A plain download: https://HOST/PATH/FILE.gguf (http:// too), as RamaLama's and llama.cpp's `-mu` take it.

The URL's fragment `#sha256=HEX` (pip's spelling) pins the content; without it the sha256 is learnt by
downloading. A URL naming the first part of a split model (`-00001-of-00003.gguf`) brings every part
from beside it. The revision (for `--pull newer`) is the server's ETag, else Last-Modified and length.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from .local import StoreError
from .refs import Ref
from .remote import Context, Remote, RemoteFile, split_siblings


def resolve(ref: Ref, ctx: Context) -> Remote:
    url, sha = ref.parts["url"], ref.parts["sha256"]
    u = urlsplit(url)
    name = PurePosixPath(u.path).name
    names = split_siblings(name, None) or [name]
    urls = [urlunsplit(u._replace(path=str(PurePosixPath(u.path).with_name(n)))) for n in names]
    r = ctx.client.head(url)
    if r.status_code in (404, 410):
        raise StoreError(f"{ref}: HTTP {r.status_code} (not found)")
    if r.status_code >= 400 and r.status_code != 405:
        raise StoreError(f"{ref}: HTTP {r.status_code}")
    h = r.headers
    revision = h.get("ETag") or f"{h.get('Last-Modified', '')}/{h.get('Content-Length', '')}"
    size = int(h["Content-Length"]) if h.get("Content-Length", "").isdigit() and len(names) == 1 else None

    def files():
        out = []
        for i, (n, file_url) in enumerate(zip(names, urls)):
            expected = sha if i == 0 else None  # the fragment pins the file the URL names
            out.append(RemoteFile(n, _fetcher(ctx, file_url, size if i == 0 else None, n), sha256=expected,
                                  size=size if i == 0 else None,
                                  key=expected or "url-" + hashlib.sha256(file_url.encode()).hexdigest()))
        return out

    return Remote(revision=revision, files=files, origin=url)


def _fetcher(ctx: Context, url: str, size, name: str):
    return lambda dest: ctx.download(url, dest, expected_size=size, desc=name)
