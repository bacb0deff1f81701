"""Pure-ASGI middleware for limits that apply to every route."""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.errors import ApiError
from headwater.http import send_error


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Caps the request body at `max_body_bytes`, counted after gzip is undone.

    The limit is enforced while reading: a declared Content-Length over the limit
    is refused before any body is read, and an inflating gzip stream is cut off
    as soon as it passes the limit, so a gzip bomb never expands in memory.
    Routes read the (decoded) body from `receive` as usual; going over the limit
    raises an `ApiError(413)` out of `receive`.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"content-encoding":
                encoding = value.strip().lower()
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
        limit = self.max_body_bytes
        if encoding in (b"", b"identity"):
            if length > limit:
                await send_error(send, _too_large(limit))
                return
            await self.app(scope, _counting(receive, limit), send)
        elif encoding == b"gzip":
            await self.app(scope, _gunzipping(receive, limit), send)
        else:
            error = ApiError(415, f"unsupported Content-Encoding {encoding.decode('latin-1')!r}: use gzip or none")
            await send_error(send, error)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(limit)
        return message

    return wrapped


def _gunzipping(receive: Receive, limit: int) -> Receive:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0

    def inflate(data: bytes) -> bytes:
        nonlocal produced
        out = []
        while data:
            # Never ask for more than one byte past the limit, however small the input.
            chunk = inflater.decompress(data, limit - produced + 1)
            produced += len(chunk)
            if produced > limit:
                raise _too_large(limit)
            out.append(chunk)
            data = inflater.unconsumed_tail
            if inflater.eof and (inflater.unused_data or data):
                raise ApiError(400, "gzip body has trailing data after the compressed stream")
        return b"".join(out)

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] != "http.request":
            return message
        try:
            body = inflate(message.get("body", b""))
            if not message.get("more_body", False) and not inflater.eof:
                raise ApiError(400, "gzip body is truncated")
        except zlib.error as exc:
            raise ApiError(400, f"gzip body is not valid: {exc}") from None
        return {"type": "http.request", "body": body, "more_body": message.get("more_body", False)}

    return wrapped
