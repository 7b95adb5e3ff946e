"""Hugging Face: hf://ORG/REPO[:QUANT] and hf://ORG/REPO/FILE.gguf, through `huggingface_hub`.

The library speaks the Hub's protocol: the endpoint (`HF_ENDPOINT`), the token (`HF_TOKEN`, or the one
`hf auth login` saved), revisions, the resolve call and its redirects (`get_hf_file_metadata`: the CDN
location, size and commit of a file). We ask it for the repository's files at one commit
(`model_info(files_metadata=True)`: names, sizes, the LFS sha256 of each), choose the files, and fetch
each location with the store's own resumable download (engine/store/download.py) rather than
`hf_hub_download`: huggingface_hub 2.x writes every attempt to a process-unique temporary file and
deletes it on failure, so an interrupted pull would start over; ours resumes it with a Range request
in the next pull, as for every other source. The token goes only to the Hub's own host, never to the
CDN. Environment variables are read on every call (not when `huggingface_hub` was imported), so a
test or a long-lived server sees the current ones.

Choosing by quant tag, as llama.cpp's `-hf ORG/REPO[:QUANT]` does: the GGUF files (projectors aside)
whose name carries the tag (`-Q4_K_M.gguf`, `.q4_k_m-00001-of-00003.gguf`, ...); no tag means Q4_K_M,
else the repository's only model. A split model brings all its parts.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .local import StoreError, Unreachable
from .refs import DEFAULT_QUANT, Ref
from .remote import SPLIT, Context, Remote, RemoteFile, split_siblings

QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?)(?![A-Za-z0-9])", re.I)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def _models(files: list[str]) -> list[str]:
    return sorted(f for f in files if f.endswith(".gguf") and "mmproj" not in PurePosixPath(f).name.lower())


def _first_parts(files: list[str]) -> list[str]:
    """One entry per model: single files, and the first part of each split model."""
    out = []
    for f in files:
        m = SPLIT.match(f)
        if not m or int(m["no"]) == 1:
            out.append(f)
    return out


def quants(files: list[str]) -> list[str]:
    return sorted({m.group(1).upper() for f in _first_parts(_models(files))
                   if (m := QUANT_IN_NAME.search(PurePosixPath(f).name))})


def choose(files: list[str], quant: str | None, what: str) -> list[str]:
    """The file(s) of the model a quant tag names in a repository's file list (every part if split)."""
    models = _models(files)
    if not models:
        raise StoreError(f"{what}: the repository has no .gguf file")
    firsts = _first_parts(models)

    def tagged(tag):
        pat = re.compile(rf"(?<![A-Za-z0-9]){re.escape(tag)}(?![A-Za-z0-9])", re.I)
        return [f for f in firsts if pat.search(PurePosixPath(f).name)]

    if quant:
        found = tagged(quant)
        if not found:
            have = ", ".join(quants(files)) or ", ".join(firsts)
            raise StoreError(f"{what}: no GGUF of quant {quant}; the repository has: {have}")
    else:
        found = tagged(DEFAULT_QUANT) or (firsts if len(firsts) == 1 else [])
        if not found:
            raise StoreError(f"{what}: several models and none is {DEFAULT_QUANT}; name one with :QUANT "
                             f"({', '.join(quants(files)) or ', '.join(firsts)})")
    first = found[0]
    return split_siblings(first, set(models)) or [first]


def resolve(ref: Ref, ctx: Context) -> Remote:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                         RevisionNotFoundError)

    p = ref.parts
    repo_id, endpoint, token = p["repo_id"], _endpoint(), _token()
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=p["revision"], files_metadata=True)
    except OfflineModeIsEnabled:
        raise Unreachable(f"{ref}: huggingface_hub is in offline mode (HF_HUB_OFFLINE)") from None
    except RepositoryNotFoundError:
        raise StoreError(f"{ref}: no repository {repo_id} on {endpoint or 'huggingface.co'} "
                         f"(or it is private or gated: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise StoreError(f"{ref}: {repo_id} has no revision {p['revision']}") from None
    except HfHubHTTPError as e:
        raise StoreError(f"{ref}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # the connection itself (huggingface_hub's HTTP client raises its own types)
        raise Unreachable(f"{ref}: cannot reach {endpoint or 'huggingface.co'}: {e}") from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    if p["filename"]:
        if p["filename"] not in siblings:
            raise StoreError(f"{ref}: {repo_id} has no file {p['filename']}; its GGUF files: "
                             f"{', '.join(_models(list(siblings))) or 'none'}")
        names = split_siblings(p["filename"], set(siblings)) or [p["filename"]]
    else:
        names = choose(list(siblings), p["quant"], str(ref))
    commit = info.sha

    def fetch_one(name: str, size):
        def fetch(dest):
            from huggingface_hub import get_hf_file_metadata, hf_hub_url
            from huggingface_hub.utils import build_hf_headers

            from huggingface_hub.errors import HfHubHTTPError

            url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
            try:
                meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)  # the Hub's HEAD: CDN location
            except HfHubHTTPError as e:
                raise StoreError(f"{repo_id}/{name}: {str(e).splitlines()[0]}") from None
            except Exception as e:
                raise Unreachable(f"{repo_id}/{name}: cannot reach {endpoint or 'huggingface.co'}: {e}") from None
            same_host = urlsplit(meta.location)[:2] == urlsplit(url)[:2]
            headers = build_hf_headers(token=token) if same_host else {}  # never send the token to a CDN
            return ctx.download(meta.location, dest, headers=headers, expected_size=meta.size or size,
                                desc=PurePosixPath(name).name)
        return fetch

    def files():
        out = []
        for name in names:
            s = siblings[name]
            sha = s.lfs.sha256 if s.lfs else None
            out.append(RemoteFile(PurePosixPath(name).name, fetch_one(name, s.size), sha256=sha, size=s.size,
                                  key=sha or f"hf-{hashlib.sha256(f'{repo_id}/{commit}/{name}'.encode()).hexdigest()}"))
        return out

    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    license_ = card.get("license") if hasattr(card, "get") else None
    origin = f"{endpoint or 'https://huggingface.co'}/{repo_id}/tree/{commit}"
    return Remote(revision=commit or "", files=files, origin=origin, info={"license": license_} if license_ else {})
