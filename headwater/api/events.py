"""`/v1/events`: native ingest (a hand-written ASGI callable: it is the hot path) and queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qsl

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from headwater.api.common import authorize, int_param, json_response
from headwater.auth import Principal
from headwater.clock import from_us, to_us
from headwater.errors import ApiError, bad_request, storage_full
from headwater.events import EMPTY_OBJECT, Event, EventDraft, FieldError, Mode, Rejection
from headwater.http import ClientDisconnected, read_body, send_error, send_json
from headwater.parsing import field_error, nesting_exceeds, parse_range_bound, parse_time
from headwater.pipeline import Ingested
from headwater.processing import waiting
from headwater.services import Services
from headwater.storage.base import Backpressure, StorageFull, StoreError
from headwater.storage.log import EventQuery
from headwater.storage.records import ActionRecord

ShortText = Annotated[str, msgspec.Meta(max_length=256)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One event as a client sends it to the native API."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    subject: ShortText | None = None
    source: ShortText | None = None
    channel: ShortText | None = None
    time: Annotated[str, msgspec.Meta(max_length=64, extra_json_schema={"format": "date-time"})] | None = None
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    # A JSON object (null reads as {}); the schema says so, since Raw itself is any JSON.
    data: Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": ["object", "null"]})] = msgspec.field(
        default_factory=lambda: EMPTY_OBJECT
    )


class MatchedTrigger(msgspec.Struct):
    trigger_id: str
    trigger_name: str
    action_type: str


class ProcessedEventResult(msgspec.Struct):
    index: int
    status: str
    id: str | None
    errors: list[FieldError]
    triggers_matched: list[MatchedTrigger]
    actions: list[ActionRecord]


class ProcessedIngestResult(msgspec.Struct):
    """The response to `POST /v1/events?wait=processed`: each result with what it fired."""

    accepted: int
    duplicates: int
    rejected: int
    results: list[ProcessedEventResult]


class EventPage(msgspec.Struct):
    data: list[Event]
    next_cursor: str | None


_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_event_list = msgspec.json.Decoder(list[msgspec.Raw])
_event_in = msgspec.json.Decoder(EventIn)
_encoder = msgspec.json.Encoder()


def draft_from(raw: bytes) -> EventDraft | Rejection:
    """Read one native event object; every problem becomes a field error, never an exception."""
    try:
        item = _event_in.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection([field_error(exc)], raw)
    data = item.data
    if bytes(data) == b"null":
        data = EMPTY_OBJECT
    elif not bytes(data).startswith(b"{"):
        return Rejection([FieldError("data", "invalid_type", "data must be a JSON object")], raw)
    when = None
    if item.time is not None:
        try:
            when = parse_time(item.time)
        except ValueError as exc:
            return Rejection([FieldError("time", "invalid_format", str(exc))], raw)
    return EventDraft(
        type=item.type,
        subject=item.subject,
        source=item.source,
        channel=item.channel,
        time=when,
        idempotency_key=item.idempotency_key,
        data=data,
        raw=raw,
    )


def read_native_body(body: bytes, max_events: int, max_depth: int) -> list[EventDraft | Rejection]:
    """One event object, or {"events": [...]}; the whole body must at least be readable JSON."""
    return [draft_from(raw) for raw in split_native_body(body, max_events, max_depth)]


def split_native_body(body: bytes, max_events: int, max_depth: int) -> list[bytes]:
    """The items of a native body, each still raw: how many there are is known (and can be
    counted against a rate limit) before any is read."""
    if not body.strip():
        raise bad_request('request body is empty: send an event object or {"events": [...]}', code="required")
    if nesting_exceeds(body, max_depth):
        raise bad_request(f"JSON nests deeper than {max_depth} levels", code="too_deep")
    if not body.isascii():
        # msgspec does not check the UTF-8 inside Raw values (`data`, batch items) and raises
        # UnicodeDecodeError, not DecodeError, for bad UTF-8 in a string it does decode.
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            message = f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}"
            raise bad_request(message, code="invalid_utf8") from None
    try:
        top = _top_level.decode(body)
    except msgspec.ValidationError:
        raise bad_request("request body must be a JSON object", code="invalid_type") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if "events" in top and "type" not in top:
        extra = sorted(set(top) - {"events"})
        if extra:
            raise bad_request(f"unknown field {extra[0]!r} in a batch body", extra[0], "unknown_field")
        try:
            raws = _event_list.decode(top["events"])
        except msgspec.ValidationError:
            raise bad_request("events must be an array of event objects", "events", "invalid_type") from None
        if not raws:
            raise bad_request("events must not be empty", "events", "too_short")
        if len(raws) > max_events:
            raise ApiError(
                413,
                f"a request may carry at most {max_events} events; this one has {len(raws)}",
                [FieldError("events", "too_many", f"at most {max_events} events per request")],
            )
        return [bytes(raw) for raw in raws]
    return [body]


_CANONICAL_ONLY = ("id", "received_at", "tenant", "mode", "seq", "violations")


def draft_from_line(line: bytes) -> EventDraft | Rejection:
    """A native event, or an exported canonical one.

    For an exported event the server-owned fields are dropped, and its old id becomes
    the idempotency key when it had none. The store takes a key that is an event's id as
    that event, so an export imported into the store it came from finds its originals, and
    imported anywhere a second time finds the first import's copies: either way nothing is
    added twice.
    """
    try:
        fields = _top_level.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        return Rejection([FieldError("", "invalid_json", f"line is not a JSON object: {exc}")], line)
    if "id" in fields and "received_at" in fields:
        old_id = fields["id"]
        for name in _CANONICAL_ONLY:
            fields.pop(name, None)
        if bytes(fields.get("idempotency_key", b"null")) == b"null":
            fields["idempotency_key"] = old_id
        line = _encoder.encode(fields)
    return draft_from(line)


def _wait_processed(query: bytes) -> bool:
    """Whether the query asks for `wait=processed`; any other `wait` is a 400, not ignored."""
    if not query:
        return False
    values = [value for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if name == "wait"]
    if any(value != "processed" for value in values):
        raise bad_request("wait must be processed (or absent)", "wait", "invalid")
    return bool(values)


class IngestEndpoint:
    """POST /v1/events as a plain ASGI callable: no Request object, no routing on the hot path."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            principal = await self.services.auth.authenticate(scope["headers"], "ingest")
            wait = _wait_processed(scope.get("query_string", b""))
            # Before the body: a key refused for now costs no more than its headers.
            await self.services.pipeline.precheck(principal)
            body = await read_body(receive)
            raws = split_native_body(body, self.settings.max_batch_events, self.settings.max_json_depth)
            # Counted before the events are read: a flood over its limit costs little to refuse.
            await self.services.pipeline.admit(principal, len(raws))
            items = [draft_from(raw) for raw in raws]
            ingested = await self.services.pipeline.ingest(principal, items, admitted=True)
            if wait:
                await send_json(send, 200, _encoder.encode(await self._processed(principal, ingested)))
                return
        except ApiError as exc:
            await send_error(send, exc)
            return
        except StorageFull:
            await send_error(send, storage_full())
            return
        except Backpressure as exc:
            error = ApiError(503, "server is busy: retry later", headers={"Retry-After": str(exc.retry_after)})
            await send_error(send, error)
            return
        except StoreError as exc:
            await send_error(send, ApiError(503, f"store unavailable: {exc}", headers={"Retry-After": "1"}))
            return
        except ClientDisconnected:
            return
        await send_json(send, 200, _encoder.encode(ingested.result))

    async def _processed(self, principal: Principal, ingested: Ingested) -> ProcessedIngestResult:
        result = ingested.result
        ids = [r.id for r in result.results if r.id is not None]
        store = self.services.store
        if not await waiting.processed(store, ingested.positions(), self.settings.sync_timeout, bus=self.services.bus):
            raise ApiError(
                503, "events are stored, but processing did not finish in time", headers={"Retry-After": "1"}
            )
        fired = await waiting.actions_fired(store, principal.tenant, principal.mode, ids)
        results = []
        for r in result.results:
            actions = fired.get(r.id, []) if r.id else []
            matched = [MatchedTrigger(a.trigger_id, a.trigger_name, a.type) for a in actions]
            results.append(ProcessedEventResult(r.index, r.status, r.id, r.errors, matched, actions))
        return ProcessedIngestResult(result.accepted, result.duplicates, result.rejected, results)


# A position in the (time, seq) order: `<time in µs since the epoch>_<seq>`. Times outside the
# datetime range are clamped (a position before or after every event), so every cursor that
# matches the pattern is a valid one.
CURSOR_PATTERN = r"^-?[0-9]{1,18}_[0-9]{1,18}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_MIN_US = to_us(datetime.min.replace(tzinfo=UTC))
_MAX_US = to_us(datetime.max.replace(tzinfo=UTC))


def encode_cursor(event: Event) -> str:
    return f"{to_us(event.time)}_{event.seq}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    if not _CURSOR.fullmatch(cursor):
        raise bad_request("cursor is not one this API returned", "cursor", "invalid")
    time_us, seq = cursor.split("_")
    return min(max(int(time_us), _MIN_US), _MAX_US), int(seq)


def _bound(request: Request, name: str, *, upper: bool) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_range_bound(raw, upper=upper)
    except ValueError as exc:
        raise bad_request(str(exc), name, "invalid_format") from None


def event_query_from(request: Request, tenant: str, mode: Mode) -> EventQuery:
    params = request.query_params
    types = tuple(dict.fromkeys(params.getlist("type")))
    before = None
    if cursor := params.get("cursor"):
        time_us, seq = decode_cursor(cursor)
        before = (from_us(time_us), seq)
    return EventQuery(
        tenant=tenant,
        mode=mode,
        types=types,
        subject=params.get("subject"),
        source=params.get("source"),
        time_from=_bound(request, "from", upper=False),
        time_to=_bound(request, "to", upper=True),
        before=before,
        limit=int_param(request, "limit", 100, 1, 1000),
    )


def routes(services: Services) -> list[BaseRoute]:
    async def list_events(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        query = event_query_from(request, principal.tenant, principal.mode)
        wanted = query.limit
        rows = await services.store.log.query_events(msgspec.structs.replace(query, limit=wanted + 1))
        page = rows[:wanted]
        cursor = encode_cursor(page[-1]) if len(rows) > wanted else None
        return json_response(EventPage(page, cursor))

    async def get_event(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        event = await services.store.log.get_event(principal.tenant, principal.mode, request.path_params["event_id"])
        if event is None:
            raise ApiError(404, "no such event")
        return json_response(event)

    return [
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/{event_id}", get_event, methods=["GET"]),
    ]
