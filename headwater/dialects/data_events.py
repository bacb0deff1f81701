"""Seed 000: the schema-free "data events" API (the smart-retail example).

    POST /api/openapi/v1/data/events   {"events": [{event_type, event_id?, source?, payload}, ...]}
      → 200 {"success": true, "data": {"received": n, "event_ids": [...]}}
    GET  /api/openapi/v1/data/events?event_type=&source=&from=&to=&limit=&cursor=
      → 200 {"success": true, "data": {"events": [...], "next_cursor": ...}}

Mapping: type = event_type, idempotency_key = event_id, source = source, data = payload
(verbatim), subject = payload.customer_id when it is a string of at most 256 characters,
time = payload.timestamp when it is a valid ISO 8601 string (otherwise the receive time;
payload is free-form, so a missing or odd timestamp is not an error).

Choices where the document is silent:
- A batch is all-or-nothing. The response has no per-event status, so a partly stored batch
  could not say which events were stored. When any event is invalid (its own fields, the
  tenant's strict schema for its type, or a number in `payload` that no 64-bit float or
  integer holds: `number_out_of_range`), nothing is stored: 400 lists every problem as
  `events.<i>.<field>`, the invalid events are kept in the quarantine (dialect `data_events`)
  so operators see what was refused, and the client fixes and resends the batch, which
  `event_id` makes safe: a re-sent `event_id` that is already stored counts as sent, whatever
  its body now (dedup comes before validation).
- `received` counts the request's events that are now in the log, re-sent ones included, so
  it equals the number sent; `event_ids[i]` is the server id of `events[i]`, the original's
  for a re-sent `event_id`.
- More than 1,000 events is 413, an empty `events` 400; unknown fields are refused, not dropped.
- GET lists every event of the key's tenant and mode, whichever API it came through, newest
  first, in the request's shape plus the server's fields: `id`, `event_type`, `event_id` (the
  client's idempotency key), `source`, `payload`, `time`, `received_at`. `from`/`to` bound
  `time`; a date as `to` covers that whole day. `limit` 1-1000 (default 100); follow
  `next_cursor` for the next page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, int_param, json_response
from headwater.api.events import decode_cursor, encode_cursor
from headwater.clock import from_us
from headwater.dialects.common import MAX_TEXT, MAX_TYPE, NATIVE_CODES, Spec, data_as, read_batch, read_object
from headwater.dialects.common import read_item as check_item
from headwater.errors import ApiError, bad_request
from headwater.events import Event, EventDraft, FieldError, Rejection
from headwater.parsing import parse_range_bound, parse_time
from headwater.services import Services
from headwater.storage.log import EventQuery

NAME = "data_events"
PATH = "/api/openapi/v1/data/events"
MAX_EVENTS = 1000

SPECS = (
    Spec("event_type", required=True, min_length=1, max_length=MAX_TYPE),
    Spec("event_id", min_length=1, max_length=MAX_TEXT),
    Spec("source", max_length=MAX_TEXT),
    Spec("payload", "object", required=True),
)


class _Hints(msgspec.Struct):
    """The two payload fields the mapping looks at; everything else is skipped unread."""

    customer_id: Any = None
    timestamp: Any = None


class Received(msgspec.Struct):
    received: int
    event_ids: list[str | None]


class PostResponse(msgspec.Struct):
    success: bool
    data: Received


class DataEvent(msgspec.Struct):
    id: str
    event_type: str
    event_id: str | None
    source: str | None
    payload: msgspec.Raw
    time: datetime
    received_at: datetime


class Page(msgspec.Struct):
    events: list[DataEvent]
    next_cursor: str | None


class GetResponse(msgspec.Struct):
    success: bool
    data: Page


_hints = msgspec.json.Decoder(_Hints)


def _subject_and_time(payload: msgspec.Raw) -> tuple[str | None, datetime | None]:
    try:
        hints = _hints.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None, None
    subject = hints.customer_id
    if not isinstance(subject, str) or len(subject) > MAX_TEXT:
        subject = None
    when = None
    if isinstance(hints.timestamp, str):
        try:
            when = parse_time(hints.timestamp)
        except ValueError:
            when = None
    return subject, when


def read_item(raw: bytes) -> EventDraft | Rejection:
    """One element of `events`."""
    checked = check_item(raw, SPECS, NATIVE_CODES)
    if isinstance(checked, Rejection):
        return checked
    payload = checked.present["payload"]
    subject, when = _subject_and_time(payload)
    return EventDraft(
        type=checked.strings["event_type"],
        subject=subject,
        source=checked.strings.get("source"),
        time=when,
        idempotency_key=checked.strings.get("event_id"),
        data=payload,
        raw=raw,
    )


def _at(index: int, field: str) -> str:
    return f"events.{index}.{field}" if field else f"events.{index}"


def _bound(request: Request, name: str, *, upper: bool) -> datetime | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return parse_range_bound(value, upper=upper)
    except ValueError as exc:
        raise bad_request(str(exc), name, "invalid_format") from None


def _shape(event: Event) -> DataEvent:
    return DataEvent(
        event.id, event.type, event.idempotency_key, event.source, event.data, event.time, event.received_at
    )


def routes(services: Services) -> list[BaseRoute]:
    settings = services.settings

    async def ingest(request: Request) -> Response:
        principal = await authorize(services, request, "ingest")
        body = read_object(await request.body(), settings.max_json_depth, NATIVE_CODES)
        raws = read_batch(body, "events", min(MAX_EVENTS, settings.max_batch_events), NATIVE_CODES)
        items = [read_item(bytes(raw)) for raw in raws]
        result = (await services.pipeline.ingest(principal, items, dialect=NAME, all_or_nothing=True)).result
        if result.rejected:
            details = [
                FieldError(_at(r.index, e.field), e.code, e.message)
                for r in result.results
                for e in data_as(items[r.index], r.errors, "payload")
            ]
            raise ApiError(400, "invalid events: nothing in this batch was stored", details)
        return json_response(PostResponse(True, Received(len(items), [r.id for r in result.results])))

    async def query(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        params = request.query_params
        before = None
        if cursor := params.get("cursor"):
            time_us, seq = decode_cursor(cursor)
            before = (from_us(time_us), seq)
        limit = int_param(request, "limit", 100, 1, 1000)
        query = EventQuery(
            tenant=principal.tenant,
            mode=principal.mode,
            types=tuple(dict.fromkeys(params.getlist("event_type"))),
            source=params.get("source"),
            time_from=_bound(request, "from", upper=False),
            time_to=_bound(request, "to", upper=True),
            before=before,
            limit=limit + 1,
        )
        rows = await services.store.log.query_events(query)
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
        return json_response(GetResponse(True, Page([_shape(e) for e in page], next_cursor)))

    return [Route(PATH, ingest, methods=["POST"]), Route(PATH, query, methods=["GET"])]
