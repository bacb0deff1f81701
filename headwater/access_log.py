"""Request ids and the access log: one line per request on the `headwater.access` logger, at info.

Every response carries `X-Request-Id`: the request's own, when it sent a usable one, else a new
`req_...` id. The line names the request id, method, route, status, latency and who called:
the tenant and the key's display prefix, never the key. As text (`--log-format text`):

    POST /v1/events 200 1.4ms tenant=acme key=hw_live_AbCd request=req_0193...

and as JSON (`--log-format json`, `JsonFormatter`), one object per line, with the route as
declared (`/v1/webhooks/{endpoint_id}`), so lines group by route, not by id. The caller is only
known deep inside a route, once its key is checked, so the middleware hands each request a slot
through a context variable and `identify` (called by the Authenticator) fills it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.metrics import UNMATCHED, metrics
from headwater.storage.registry import KeyRecord

logger = logging.getLogger("headwater.access")

# A route the app dispatches without Starlette's router (the hot ingest routes) names itself here.
ROUTE_KEY = "headwater.route"
# Anything else (too long, spaces, quotes, control characters) could forge or break log lines.
_USABLE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=@/-]{1,128}")
_encoder = msgspec.json.Encoder()


class _Caller:
    __slots__ = ("record",)

    def __init__(self) -> None:
        self.record: KeyRecord | None = None


_caller: ContextVar[_Caller | None] = ContextVar("headwater_access_caller", default=None)


def identify(record: KeyRecord) -> None:
    """Name the request's caller in its access-log line (a no-op when nothing is logged)."""
    caller = _caller.get()
    if caller is not None:
        caller.record = record


def route_template(scope: Scope) -> str | None:
    """The route a request was dispatched to, as declared, or None (no route matched)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    hot = scope.get(ROUTE_KEY)
    return hot if isinstance(hot, str) else None


# Labels are bounded: a method or path a client made up is one label value, not one each.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _observe(scope: Scope, status: int, started: float) -> None:
    method = scope["method"] if scope["method"] in METHODS else "other"
    route = route_template(scope) or UNMATCHED
    metrics().request(method, route, status, time.perf_counter() - started)


# A new id: this process's random prefix and a count. Unique without a clock read or a lock, so
# cheap on the hot path (a UUIDv7 per request cost several microseconds). `serve --processes`
# forks after this module is imported: each child draws a prefix of its own.
_prefix = b""
_count = itertools.count()


def _new_prefix() -> None:
    global _prefix
    _prefix = b"req_" + secrets.token_hex(8).encode()


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)


def _request_id(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _USABLE_REQUEST_ID.fullmatch(value):
                return bytes(value)
            break
    return b"%s%016x" % (_prefix, next(_count))


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        # A request that ends without a response is answered 500 by the server.
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id)]}
            await send(message)

        # Checked per request (a cached lookup), so the hot path pays little at warning and above.
        if not logger.isEnabledFor(logging.INFO):
            try:
                await self.app(scope, receive, sending)
            finally:
                _observe(scope, status, started)
            return
        caller = _Caller()
        token = _caller.set(caller)
        try:
            await self.app(scope, receive, sending)
        finally:
            _caller.reset(token)
            _observe(scope, status, started)
            record = caller.record
            latency = (time.perf_counter() - started) * 1000
            tenant = record.tenant if record is not None else None
            prefix = record.prefix if record is not None else None
            shown_id = request_id.decode("ascii")
            line = {
                "request_id": shown_id,
                "method": scope["method"],
                "route": route_template(scope),
                "status": status,
                "latency_ms": round(latency, 2),
                "tenant": tenant,
                "key": prefix,
            }
            logger.info(
                "%s %s %d %.1fms tenant=%s key=%s request=%s",
                scope["method"],
                scope["path"],
                status,
                latency,
                tenant or "-",
                prefix or "-",
                shown_id,
                extra={"access": line},
            )


class JsonFormatter(logging.Formatter):
    """Every log record as one JSON object on one line: time, level, logger, then an access line's
    fields or else the message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()
