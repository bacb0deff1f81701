"""The access log: one line per request on the `headwater.access` logger, at info.

`POST /v1/events 200 1.4ms tenant=acme key=hw_live_AbCd`: method, path (without the query),
status, latency, and who called: the tenant and the key's display prefix, never the key. The
caller is only known deep inside a route, once its key is checked, so the middleware hands each
request a slot through a context variable and `identify` (called by the Authenticator) fills it.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.storage.registry import KeyRecord

logger = logging.getLogger("headwater.access")


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


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Checked per request (a cached lookup), so the hot path pays nothing at warning and above.
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        caller = _Caller()
        token = _caller.set(caller)
        # A request that ends without a response is answered 500 by the server.
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _caller.reset(token)
            record = caller.record
            logger.info(
                "%s %s %d %.1fms tenant=%s key=%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                record.tenant if record is not None else "-",
                record.prefix if record is not None else "-",
            )
