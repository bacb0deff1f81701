"""`GET /v1/events/live`: every event of the key's tenant and mode as the log takes it, in log
order, as server-sent events (`id` is the event's offset, `event: event`, `data` its JSON).

Not a sample: the stream reads the log itself from a position (`after`, or the `Last-Event-ID`
a reconnecting client sends, or else the head when it opened), so a client that reconnects
with the last id it saw misses nothing and sees nothing twice. The log has no index by tenant
in log order, so the stream reads ranges of offsets up to a head it has seen (all of them are
committed: offsets commit in order on every backend), the store keeping only the tenant's rows;
the type, subject and source filters apply here.

Every stream of a process shares one look at the log's head (`HeadWatch`), so an idle console
costs a few queries a second however many are open.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize
from headwater.auth import Principal
from headwater.errors import bad_request
from headwater.events import Event, Mode
from headwater.services import Services
from headwater.storage.log import EventLog

SPAN = 5000  # offsets read at once: a page holds at most this many of the tenant's events
POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 15.0
MAX_TYPES = 20
_OFFSET = re.compile(r"^[0-9]{1,18}$")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_encoder = msgspec.json.Encoder()

# Set when the server begins to stop (`processes.run_api`): a stream ends at its next look,
# rather than holding uvicorn's graceful shutdown open for as long as a browser stays.
_stopping = False


def stop_streams() -> None:
    global _stopping
    _stopping = True


class HeadWatch:
    """The log's head, looked up at most once per POLL_SECONDS for every stream of the process."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.head = -1
        self.looked = 0.0
        self.lock = asyncio.Lock()

    async def look(self) -> int:
        """The head, as looked up at most POLL_SECONDS ago."""
        async with self.lock:
            if time.monotonic() - self.looked >= POLL_SECONDS:
                self.head = await self.log.head()
                self.looked = time.monotonic()
        return self.head

    async def wait_past(self, seq: int, timeout: float) -> bool:
        """Whether the head passed `seq` within `timeout` seconds (or the server is stopping)."""
        deadline = time.monotonic() + timeout
        while not _stopping:
            if await self.look() > seq:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(POLL_SECONDS, left))
        return False


class Filter(msgspec.Struct, frozen=True):
    tenant: str
    mode: Mode
    types: frozenset[str]
    subject: str | None
    source: str | None

    def wants(self, event: Event) -> bool:
        return (
            event.tenant == self.tenant
            and event.mode == self.mode
            and (not self.types or event.type in self.types)
            and (self.subject is None or event.subject == self.subject)
            and (self.source is None or event.source == self.source)
        )


def message(event: Event) -> bytes:
    """One server-sent event. `data` is one line per line of the JSON: an event's data is kept
    as the client sent it, and a line break there (whitespace between JSON tokens; inside a
    string it is escaped) would otherwise end the field."""
    lines = _LINE_BREAK.split(_encoder.encode(event))
    return b"id: %d\nevent: event\n%s\n\n" % (event.seq or 0, b"".join(b"data: " + line + b"\n" for line in lines))


def _offset(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    if not _OFFSET.fullmatch(raw):
        raise bad_request(f"{name} must be an event's offset (the id of a message of this stream)", name, "invalid")
    return int(raw)


def read_request(request: Request, principal: Principal) -> tuple[Filter, int | None]:
    """The stream's filter, and the offset it starts after (None: the head, when it opens)."""
    params = request.query_params
    types = frozenset(t for t in params.getlist("type") if t)
    if len(types) > MAX_TYPES:
        raise bad_request(f"at most {MAX_TYPES} types", "type", "too_many")
    after = _offset(request.headers.get("last-event-id"), "Last-Event-ID")
    if after is None:
        after = _offset(params.get("after"), "after")
    subject, source = params.get("subject") or None, params.get("source") or None
    return Filter(principal.tenant, principal.mode, types, subject, source), after


def routes(services: Services) -> list[BaseRoute]:
    log = services.store.log
    watch = HeadWatch(log)

    async def stream(wanted: Filter, after: int) -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        position = after
        quiet_since = time.monotonic()
        while not _stopping:
            head = await watch.look()
            if head > position:
                upto = min(head, position + SPAN)
                for event in await log.read_scope(wanted.tenant, wanted.mode, position, upto):
                    if wanted.wants(event):
                        yield message(event)
                        quiet_since = time.monotonic()
                position = upto
                if position < head:
                    continue
            if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
            await watch.wait_past(position, KEEPALIVE_SECONDS)

    async def live(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        wanted, after = read_request(request, principal)
        if after is None:
            after = await log.head()
        # No proxy may hold the stream back to buffer it, nor a cache keep it.
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # the headers alone: a stream would never end
            return Response(None, 200, headers, media_type="text/event-stream")
        return StreamingResponse(stream(wanted, after), media_type="text/event-stream", headers=headers)

    return [Route("/v1/events/live", live, methods=["GET"])]
