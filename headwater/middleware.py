"""Pure-ASGI middleware for limits that apply to every route."""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headwater.errors import ApiError
from headwater.http import send_error

# The rest of a refused body is never read: the answer says so, and the server closes the
# connection once it is sent instead of reading (and throwing away) the body to reach the next request.
_CLOSE = {"Connection": "close"}


def _too_large(limit: int, what: str = "request body") -> ApiError:
    return ApiError(413, f"{what} exceeds the limit of {limit} bytes", headers=_CLOSE)


class BodyLimitMiddleware:
    """Caps the request body at `max_body_bytes`, counted after gzip is undone, and a gzip body
    also at `max_compressed_bytes` as sent (default: `max_body_bytes`).

    The limits are enforced while reading: a declared Content-Length over the limit is refused
    before any body is read, and a gzip stream is cut off as soon as either its inflated bytes
    (a gzip bomb) or the bytes sent (a stream that inflates to next to nothing, empty deflate
    blocks say) pass their limit, so neither expands in memory nor keeps the server reading.
    Routes read the (decoded) body from `receive` as usual; going over a limit raises an
    `ApiError(413)` out of `receive`. Every 413 closes the connection.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_compressed_bytes: int | None = None) -> None:
        if max_body_bytes <= 0 or (max_compressed_bytes is not None and max_compressed_bytes <= 0):
            raise ValueError("body limits must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_compressed_bytes = max_compressed_bytes or max_body_bytes

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
            if length > self.max_compressed_bytes:
                await send_error(send, _too_large(self.max_compressed_bytes, "compressed request body"))
                return
            await self.app(scope, _gunzipping(receive, limit, self.max_compressed_bytes), send)
        else:
            error = ApiError(
                415, f"unsupported Content-Encoding {encoding.decode('latin-1')!r}: use gzip or none", headers=_CLOSE
            )
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


def _gunzipping(receive: Receive, limit: int, compressed_limit: int) -> Receive:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    produced = 0
    received = 0

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
        nonlocal received
        if message["type"] != "http.request":
            return message
        compressed = message.get("body", b"")
        received += len(compressed)
        if received > compressed_limit:
            raise _too_large(compressed_limit, "compressed request body")
        try:
            body = inflate(compressed)
            if not message.get("more_body", False) and not inflater.eof:
                raise ApiError(400, "gzip body is truncated")
        except zlib.error as exc:
            raise ApiError(400, f"gzip body is not valid: {exc}") from None
        return {"type": "http.request", "body": body, "more_body": message.get("more_body", False)}

    return wrapped
