"""uvicorn's httptools protocol with deadlines on the client: a connection that is slow to send
its headers or stops sending its body is closed, so idle or trickling sockets (slowloris) cannot
pile up. uvicorn itself waits for headers and bodies for as long as a client likes.

- headers: complete within `header` seconds of the connection opening (the first request) or of
  the request's first byte (a later one on a kept-alive connection), else 408 and close;
- body: no gap of more than `body` seconds between its bytes while the server waits for them
  (not while the app has stopped reading, nor while the client waits for `100 Continue`), else
  408 (or, once a response has begun, just close);
- between requests: uvicorn's own keep-alive timeout, `keep_alive` seconds.

The headers are also capped at `MAX_HEADER_BYTES` (431 and close): httptools keeps whatever it is
sent, and a fast client could otherwise fill memory with one endless header before any deadline.
And once a response is complete, at most `MAX_UNREAD_BYTES` more of a body the app did not read (a
401 answered before the body, say) are read and dropped to keep the connection: beyond that it
closes, where uvicorn would read on for as long as the client sends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from headwater.errors import ApiError

MAX_HEADER_BYTES = 64 * 1024
MAX_UNREAD_BYTES = 64 * 1024

# Answered straight onto the socket, then closed: no app is running that could answer.
_STATUS = {408: b"408 Request Timeout", 431: b"431 Request Header Fields Too Large"}
_HEADERS_TIMED_OUT = (408, ApiError(408, "timed out waiting for the request headers").body())
_BODY_TIMED_OUT = (408, ApiError(408, "timed out waiting for the request body").body())
_HEADERS_TOO_LARGE = (431, ApiError(431, f"request headers exceed the limit of {MAX_HEADER_BYTES} bytes").body())


@dataclass(frozen=True)
class Timeouts:
    header: float = 10.0
    body: float = 10.0
    keep_alive: float = 5.0


def _closing_response(answer: tuple[int, bytes]) -> bytes:
    status, body = answer
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (_STATUS[status], len(body)) + body


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with the deadlines of the module docstring; `with_timeouts` makes the
    class uvicorn is given (`uvicorn.Config(http=...)`), since uvicorn constructs it itself."""

    timeouts: ClassVar[Timeouts] = Timeouts()

    @classmethod
    def with_timeouts(cls, timeouts: Timeouts) -> type[TimedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"timeouts": timeouts})

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.timeouts.keep_alive  # type: ignore[assignment]  # uvicorn says int
        self._deadline: asyncio.TimerHandle | None = None
        # When the body last moved: cheaper than re-arming a timer for every chunk.
        self._body_seen = 0.0
        # Header bytes of the request being read, counted per chunk that held nothing else.
        self._awaiting_headers = True
        self._headers_seen = 0
        self._header_bytes = 0
        self._unread_bytes = 0
        self._in_message = False  # between a request's first byte and its end

    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.timeouts.header, self._headers_timed_out)

    def data_received(self, data: bytes) -> None:
        awaiting, seen = self._awaiting_headers, self._headers_seen
        super().data_received(data)
        if self.transport.is_closing():
            return
        # A deadline only for a request this data left unfinished: one that came whole in one
        # read (most do) costs no timer set and cancelled.
        if self._in_message and self._deadline is None:
            if self._awaiting_headers:
                self._arm(self.timeouts.header, self._headers_timed_out)
            else:
                self._body_seen = self.loop.time()
                self._arm(self.timeouts.body, self._body_timed_out)
        if not (awaiting and self._awaiting_headers and self._headers_seen == seen):
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._close_with(_HEADERS_TOO_LARGE)

    def _close_with(self, answer: tuple[int, bytes]) -> None:
        # A pipelined request's headers may come in behind one still being answered: then the
        # connection just closes, since this answer would land in the middle of that one.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_closing_response(answer))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        # A later request's header deadline runs from this first byte (armed by data_received,
        # if its headers are not all in); the first one's runs from the connection.
        self._in_message = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._headers_seen += 1
        self._header_bytes = 0
        self._unread_bytes = 0
        self._disarm()
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle and self.cycle is not None:
            self.cycle.transport = _JoinedWrites(self.transport, self.loop)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._body_seen = self.loop.time()
        if self.cycle.response_complete:
            self._unread_bytes += len(body)
            if self._unread_bytes > MAX_UNREAD_BYTES:
                self.transport.close()
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._awaiting_headers = True
        self._in_message = False
        self._disarm()
        super().on_message_complete()

    def _headers_timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self._close_with(_HEADERS_TIMED_OUT)

    def _body_timed_out(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        now = self.loop.time()
        # Not the client's delay: the app has not read what came (uvicorn stopped reading), or the
        # client waits for the `100 Continue` the app's first read sends.
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._body_seen = now
        idle = now - self._body_seen
        if idle < self.timeouts.body:
            self._arm(self.timeouts.body - idle, self._body_timed_out)
            return
        if not cycle.response_started:
            self.transport.write(_closing_response(_BODY_TIMED_OUT))
        # The app's next receive() says the client is gone; anything it still sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()


class _JoinedWrites:
    """A request cycle's transport that holds the response's first write (uvicorn's status line
    and headers) until the next (the body), and sends both in one write: one system call per
    response instead of two (strace: uvloop writes each at once). What is held goes out at the
    loop's next turn at the latest (a HEAD's headers, a `100 Continue`)."""

    __slots__ = ("first", "held", "loop", "transport")

    JOIN_BYTES = 64 * 1024  # a larger body goes in a write of its own, not copied behind the head

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: bytes | None = None
        self.first = True

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= self.JOIN_BYTES:
                self.transport.write(held + data)
                return
            self.transport.write(held)
        elif self.first:
            self.first = False
            self.held = bytes(data)
            self.loop.call_soon(self.flush)
            return
        self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()
