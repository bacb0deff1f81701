"""Browsers as clients: CORS on the ingest routes, for publishable keys and their origins.

A publishable key is an `ingest` key meant to sit in a web page. It lists the origins
(`scheme://host[:port]`) whose pages may use it; a browser on another site gets a 403 and no
CORS headers, so its script cannot even read the refusal. The key is public by design: the
origin check keeps other sites' pages from using it, not a script outside a browser (which
can send any `Origin`, or none).

Preflight (`OPTIONS` with `Access-Control-Request-Method`) carries no key, so it is answered
for an origin that an active publishable key of any tenant lists (`OriginIndex`, re-read at
most every `ttl` seconds). Answering every preflight would tell a browser on any site that it
may send, and only the real request would then refuse it; this way an origin no key lists
never gets a CORS header, and a page on a listed origin is still refused on the real request
when it sends another tenant's key (the key's own list decides, in `admit`).

The real request's `Origin` is read here and checked where the key is known: the
Authenticator calls `admit(record)`, which refuses a publishable key from an origin not on
its list and grants the CORS headers to one that is. Every ingest route's response says
`Vary: Origin`. Keys that are not publishable never get CORS headers: a secret key has no
business in a page.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.errors import ApiError
from headwater.http import send_error
from headwater.storage.registry import KeyRecord

MAX_ORIGIN_LENGTH = 300
ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-API-Key, X-Tenant-Id"
EXPOSED_HEADERS = b"Retry-After"
PREFLIGHT_MAX_AGE = b"600"  # the real request is checked anyway: a revoked key stops at once
DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def parse_origin(text: str) -> str:
    """The origin as browsers send it in `Origin` (lower case, no default port), or a
    ValueError saying what is wrong: `scheme://host[:port]`, http or https, no path, no
    wildcard, a DNS name (punycode for international names) or an IP address."""
    if len(text) > MAX_ORIGIN_LENGTH:
        raise ValueError(f"an origin is at most {MAX_ORIGIN_LENGTH} characters")
    if "*" in text:
        raise ValueError("wildcards are not supported: list each origin, e.g. https://shop.example")
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("an origin is ASCII without whitespace (punycode for international names)")
    lowered = text.lower()
    match = _ORIGIN.fullmatch(lowered)
    if match is None:
        raise ValueError(
            "an origin is scheme://host[:port] with no path, query or user, e.g. https://shop.example"
            " (as a browser sends it in Origin)"
        )
    scheme, host, port = match["scheme"], match["host"], match["port"]
    if scheme not in DEFAULT_PORTS:
        raise ValueError("an origin's scheme is http or https")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    elif not all(_LABEL.fullmatch(label) for label in host.split(".")) or len(host) > 253:
        raise ValueError(f"{host!r} is neither a host name (letters, digits and '-' in dot-separated labels) nor an IP")
    if port is not None:
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError("an origin's port is from 1 to 65535")
        if number != DEFAULT_PORTS[scheme]:
            return f"{scheme}://{host}:{number}"
    return f"{scheme}://{host}"


class _Browser:
    """The `Origin` of the request in hand, and whether its key may be used from it."""

    __slots__ = ("allowed", "origin")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.allowed = False


_browser: ContextVar[_Browser | None] = ContextVar("headwater_cors_browser", default=None)


def admit(record: KeyRecord) -> None:
    """Called once the request's key is known: a publishable key from an origin not on its list
    is a 403; from one on it, the response gets its CORS headers."""
    browser = _browser.get()
    if browser is None or not record.publishable:
        return
    if browser.origin not in record.allowed_origins:
        raise ApiError(403, "this publishable key may not be used from this origin: it is not in its allowed_origins")
    browser.allowed = True


class OriginIndex:
    """Every origin any active publishable key lists, re-read at most every `ttl` seconds."""

    def __init__(self, load: Callable[[], Awaitable[set[str]]], ttl: float) -> None:
        self.load = load
        self.ttl = ttl
        self._origins: set[str] = set()
        self._until = float("-inf")

    async def allows(self, origin: str) -> bool:
        now = time.monotonic()
        if now >= self._until:
            self._origins = await self.load()
            self._until = now + self.ttl
        return origin in self._origins


def _origin(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's `Origin`; sent twice, an origin no key lists."""
    origin = None
    for name, value in headers:
        if name == b"origin":
            if origin is not None:
                return ""
            origin = value.decode("latin-1")
    return origin


class CorsMiddleware:
    """CORS for the browser ingest routes `paths` (all POST); see the module's docstring."""

    def __init__(self, app: ASGIApp, paths: frozenset[str], origins: OriginIndex) -> None:
        if not all(path.startswith("/") for path in paths):
            raise ValueError("CORS paths are absolute")
        self.app = app
        self.paths = paths
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _origin(scope["headers"]) if scope["type"] == "http" else None
        if origin is None:
            await self.app(scope, receive, send)
            return
        ingest = scope["path"] in self.paths
        if (
            ingest
            and scope["method"] == "OPTIONS"
            and any(name == b"access-control-request-method" for name, _ in scope["headers"])
        ):
            await self.preflight(origin, scope, send)
            return
        browser = _Browser(origin)
        token = _browser.set(browser)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and ingest:
                headers = [*message.get("headers", ()), (b"vary", b"Origin")]
                if browser.allowed:
                    headers += [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-expose-headers", EXPOSED_HEADERS),
                    ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _browser.reset(token)

    async def preflight(self, origin: str, scope: Scope, send: Send) -> None:
        method = next(value for name, value in scope["headers"] if name == b"access-control-request-method")
        if method.strip() != b"POST" or not await self.origins.allows(origin):
            error = ApiError(
                403,
                "no publishable key allows this origin to POST here: create an ingest key with"
                ' "publishable": true and this origin in "allowed_origins"',
                headers={"Vary": "Origin"},
            )
            await send_error(send, error)
            return
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", b"POST"),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
