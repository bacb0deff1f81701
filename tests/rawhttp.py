"""HTTP/1.1 over plain sockets, for tests of what a server does to a connection (timeouts, closing
after a 413) that an HTTP client library hides."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterable

# Far above every timeout the tests set (1 s), far below what a server without them holds a
# connection for: waits for the server end there, and fail.
BOUND = 20.0


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND)


def read_until_closed(sock: socket.socket, bound: float = BOUND) -> bytes:
    """Everything the server sends until it closes the connection (fails after `bound` seconds)."""
    deadline = time.monotonic() + bound
    received = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open {bound} s; it sent {received!r}") from None
        if not chunk:
            return received
        received += chunk


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read to its end (the connection may stay open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the headers' end: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({name.lower(): value for name, value in fields.items()}[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the body's end: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def without_date(response: bytes) -> bytes:
    """The response without its `date` header, which changes every second."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send_while_open(sock: socket.socket, chunks: Iterable[bytes]) -> tuple[int, bytes]:
    """Send `chunks` until the server closes the connection, reading whatever it answers on
    the way: (the bytes sent, what was received). Fails if every chunk went through."""
    sent = 0
    received = b""
    selector = selectors.DefaultSelector()
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + BOUND
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                if time.monotonic() > deadline:
                    raise AssertionError(f"still sending after {BOUND} s, {sent} bytes sent")
                for _, events in selector.select(BOUND):
                    if events & selectors.EVENT_READ:
                        data = sock.recv(65536)
                        if not data:
                            return sent, received
                        received += data
                    if events & selectors.EVENT_WRITE:
                        try:
                            written = sock.send(view)
                        except BlockingIOError:
                            continue
                        sent += written
                        view = view[written:]
    except (BrokenPipeError, ConnectionResetError):
        return sent, received
    finally:
        selector.close()
        sock.setblocking(True)
    raise AssertionError(f"the server read all {sent} bytes without closing; it sent {received!r}")
