"""Small ASGI helpers for the hand-written hot routes: read the body, send JSON."""

from __future__ import annotations

from starlette.types import Receive, Send

from headwater.errors import ApiError

JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientDisconnected(Exception):
    pass


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw_headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        raw_headers.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError) -> None:
    await send_json(send, error.status, error.body(), error.headers)
