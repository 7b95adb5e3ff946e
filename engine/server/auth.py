"""API keys: llama-server's `--api-key KEY[,KEY...]` and `--api-key-file FILE` (one key a line, `#`
comments), checked in constant time.

A key's SHA-256 is compared with `hmac.compare_digest` against every configured key's, all of them every
time, so neither the length of a key, the position of the first wrong character nor which key matched
shows in the response time.
Keys are never part of a message: a refusal says only that the key is missing or wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.datastructures import Headers

OPEN_PATHS = frozenset({"/health", "/v1/health"})  # for load balancers: everything else needs a key


def read_keys(keys: str | None = None, key_file: str | None = None) -> list[str]:
    """The keys from a comma-separated list and a file; an empty result means no key is required."""
    out = [k.strip() for k in (keys or "").split(",") if k.strip()]
    if key_file:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the API key file {key_file}: {getattr(e, 'strerror', None) or e}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
        if not out:
            raise ValueError(f"the API key file {key_file} holds no key")
    return out


def presented_key(headers) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` (OpenAI's clients) or `X-Api-Key: KEY`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    return headers.get("x-api-key")


class APIKeys:
    def __init__(self, keys: list[str]):
        self._keys = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"APIKeys({len(self._keys)} keys)"  # never the keys themselves

    def allows(self, key: str | None) -> bool:
        given = hashlib.sha256((key or "").encode("utf-8", errors="surrogateescape")).digest()
        ok = False
        for k in self._keys:  # no early exit: every key is compared
            ok |= hmac.compare_digest(given, k)
        return ok and key is not None


class KeyGuard:
    """ASGI middleware: a request to any path but OPEN_PATHS without a valid key is answered by `deny()`
    (OpenAI's 401 error JSON) before the app sees it. Pure ASGI rather than `@app.middleware("http")`:
    Starlette's BaseHTTPMiddleware passes every chunk of a streamed response through a memory stream and
    a task switch of its own: per-token event-loop work that, on a 2-vCPU machine, competes with the
    forward passes (py-spy: the event loop busy ~25% of a lone stream's time, that middleware's layers a
    large part of it). Errors the routes raise are answered by the app's exception handlers."""

    def __init__(self, app, keys: APIKeys, deny):
        self.app, self.keys, self.deny = app, keys, deny

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.keys and scope["path"] not in OPEN_PATHS:
            if not self.keys.allows(presented_key(Headers(scope=scope))):
                await self.deny()(scope, receive, send)
                return
        await self.app(scope, receive, send)
