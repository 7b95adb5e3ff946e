"""One HTTP download into a file that survives interruption: Range resume, sha256 on the way, progress on stderr.

Why by hand (on httpx) and not a library: what this must guarantee is small and exact. The bytes go to a
partial file that is never the final name; a retry (in this process, after a dropped connection, or in
the next `pull` after a crash) asks for `Range: bytes=N-` and appends; a server that ignores the Range
(200 instead of 206) or answers for another offset restarts the file from zero rather than splicing
two different bodies; the sha256 of the whole file is computed as it arrives (the kept prefix is hashed
once on resume), so the caller can check it before anything is renamed into the store.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

CHUNK = 1 << 20
RETRIES = 5          # attempts after the first, per file, while bytes keep arriving


class DownloadError(OSError):
    """A download that failed for good; the message names the URL, the reason and what was kept."""


def http_client(headers: dict | None = None):
    """An httpx client as every source uses it: redirects followed, proxies from the environment."""
    import httpx

    from engine import __version__

    h = {"User-Agent": f"ggufpy/{__version__}"}
    h.update(headers or {})
    return httpx.Client(follow_redirects=True, headers=h, timeout=httpx.Timeout(60.0, connect=20.0))


def hash_file(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h


def progress_bar(total: int | None, initial: int, desc: str):
    """A tqdm bar on stderr (never stdout: stdout is the answer); silent when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None, leave=False)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _describe_status(url: str, status: int) -> str:
    hints = {401: "authentication required (for Hugging Face set HF_TOKEN)", 403: "access denied",
             404: "not found", 416: "range not satisfiable"}
    return f"{url}: HTTP {status} {hints.get(status, '')}".rstrip()


def download(url: str, dest: Path, *, client=None, headers: dict | None = None, desc: str | None = None,
             retries: int | None = None, expected_size: int | None = None) -> str:
    """Download `url` into `dest`, continuing the bytes `dest` already holds. Returns the hex sha256
    of the whole file. Raises `DownloadError` (with `dest` kept for the next attempt) when it gives up."""
    import httpx

    retries = RETRIES if retries is None else retries
    own = client is None
    client = client or http_client()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = dest.stat().st_size if dest.exists() else 0
    if expected_size is not None and have > expected_size:  # not a prefix of this file: start over
        dest.unlink()
        have = 0
    h = hash_file(dest) if have else hashlib.sha256()
    failures = 0
    bar = None
    try:
        while True:
            req = {"Accept-Encoding": "identity", **(headers or {})}  # offsets and lengths of the file itself
            if have:
                req["Range"] = f"bytes={have}-"
            try:
                with client.stream("GET", url, headers=req) as r:
                    if r.status_code == 416 and have:
                        # asked past the end: the kept bytes were the whole file, or were not this file
                        total = r.headers.get("Content-Range", "").rpartition("/")[2]
                        if total.isdigit() and int(total) == have:
                            break
                        dest.unlink()
                        have, h = 0, hashlib.sha256()
                        continue
                    if r.status_code >= 400:
                        raise DownloadError(_describe_status(url, r.status_code))
                    if have and (r.status_code != 206 or _content_range_start(r.headers.get("Content-Range")) != have):
                        dest.unlink()  # the server sent the file from the start (or another range): restart
                        have, h = 0, hashlib.sha256()
                    length = r.headers.get("Content-Length")
                    total = have + int(length) if length and length.isdigit() else expected_size
                    if bar is None:
                        bar = progress_bar(total, have, desc or Path(url).name)
                    else:
                        bar.reset(total=total)
                        bar.update(have)
                    with open(dest, "ab") as f:
                        for chunk in r.iter_bytes():  # as received: a drop loses nothing buffered
                            f.write(chunk)
                            h.update(chunk)
                            have += len(chunk)
                            bar.update(len(chunk))
                            failures = 0  # bytes arrived: the connection was good
                    if total is not None and have < total:
                        raise httpx.RemoteProtocolError(f"connection closed at byte {have} of {total}")
                break
            except httpx.TransportError as e:
                failures += 1
                if failures > retries:
                    raise DownloadError(f"{url}: {e} (gave up after {retries} retries; {have} bytes kept in "
                                        f"{dest}, the next pull resumes from there)") from None
                print(f"download of {desc or Path(url).name} interrupted at byte {have} ({e}); resuming",
                      file=sys.stderr)
                time.sleep(min(0.25 * 2 ** failures, 5.0))
    finally:
        if bar is not None:
            bar.close()
        if own:
            client.close()
    return h.hexdigest()
