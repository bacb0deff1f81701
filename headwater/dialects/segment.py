"""Segment's HTTP Tracking API: `POST /v1/{track,identify,page,screen,group,alias,batch}`.

Segment's libraries (and anything else that speaks the Tracking API) can point their `host`
at Headwater and keep working. Authentication is the write key — a Headwater `hw_live_`/
`hw_test_` key with the `ingest` permission — sent as the Basic-auth username (what the
libraries do), as `Authorization: Bearer`, or as `writeKey` in the body (Segment's curl
examples); a request that carries its key in several of these places must carry the same key.

Mapping of one message to the canonical event:

| canonical         | from the Segment message                                                 |
|-------------------|--------------------------------------------------------------------------|
| `type`            | `event` for `track`; otherwise the call: `identify`, `page`, `screen`, `group`, `alias` |
| `subject`         | `userId`, else `anonymousId` (numbers are accepted and written as strings) |
| `source`          | always `"segment"` (the library is in `data.context.library`)            |
| `channel`         | `context.channel`, else the message's top-level `channel`                |
| `time`            | `timestamp`, corrected for clock skew (below); none → the receive time   |
| `idempotency_key` | `messageId` (a repeated `messageId` is a duplicate, as in Segment)        |
| `data`            | the message minus `messageId`, `timestamp`, `sentAt`, `writeKey` and (for `track`) `event`: |
|                   | `type`, `userId`, `anonymousId`, `properties`/`traits`, `context`, `integrations`, |
|                   | `name`/`category`, `groupId`, `previousId` and anything else stay verbatim |

A batch's top-level `context` is merged into each message's `context` (the message's own keys
win). On the single-message routes the route names the call, whatever `type` the body says.

Clock skew: Segment sets `timestamp = receivedAt - (sentAt - timestamp)` whenever `sentAt`
is present. Headwater applies the same formula only when `|sentAt - receivedAt|` exceeds
`SKEW_THRESHOLD_SECONDS` (5 minutes; `HEADWATER_SEGMENT_SKEW_SECONDS` overrides it): below
that the difference is transit and queueing time, and correcting would only move correct
client times by the network latency. `sentAt` is the message's own, else the batch's. When a
time was corrected, `data` keeps the client's `originalTimestamp` and the `sentAt` used.

Validation (a failing message is rejected and quarantined; the others are still accepted):
`userId` or `anonymousId` required; `track` needs `event` (1–128 characters), `group` a
`groupId`, `alias` a `userId` and a `previousId`; `context`/`properties`/`traits`/
`integrations` must be objects; timestamps must be ISO 8601; a message may be at most 32 KB.

Responses follow Segment: `200 {"success": true}` for every readable request, including a
batch in which some messages were rejected (Segment also answers 200 and drops them); the
body also carries Headwater's per-message results (`accepted`, `duplicates`, `rejected`,
`results`), which Segment's libraries ignore. A request Segment would refuse gets a 400 with
Headwater's error body: a single message over 32 KB, a batch body over 500 KB or with more
than 2,500 messages, malformed JSON or a body that is not an object, a malformed batch-level
`sentAt`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import json_response
from headwater.auth import Principal, read_credentials
from headwater.errors import ApiError, bad_request
from headwater.events import EventDraft, EventResult, FieldError, Rejection
from headwater.parsing import (
    MAX_NUMBER_ERRORS,
    MAX_TIME_LENGTH,
    field_error,
    nesting_exceeds,
    out_of_range_numbers,
    parse_time,
)
from headwater.services import Services

NAME = "segment"
SOURCE = "segment"
KINDS = ("track", "identify", "page", "screen", "group", "alias")
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
SKEW_THRESHOLD_SECONDS = 300.0
MAX_TYPE_LENGTH = 128

# Fields that become canonical fields (or are transport/credentials) and so leave `data`.
_ENVELOPE = frozenset({"messageId", "timestamp", "sentAt", "writeKey"})
_OBJECT_FIELDS = ("context", "properties", "traits", "integrations")

# Segment ids are strings; numbers are accepted (64-bit, so the canonical subject stays short).
Id = Annotated[str, msgspec.Meta(max_length=256)] | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
TimeText = Annotated[str, msgspec.Meta(max_length=MAX_TIME_LENGTH)]


class _Message(msgspec.Struct):
    """The typed fields of a message; everything else is carried in `data` unread."""

    type: str | None = None
    userId: Id | None = None
    anonymousId: Id | None = None
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    timestamp: TimeText | None = None
    sentAt: TimeText | None = None
    event: str | None = None
    groupId: Id | None = None
    previousId: Id | None = None
    channel: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class _Context(msgspec.Struct):
    channel: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class _BatchEnvelope(msgspec.Struct):
    batch: list[msgspec.Raw]
    sentAt: TimeText | None = None
    context: dict[str, msgspec.Raw] | None = None


class _WriteKey(msgspec.Struct):
    writeKey: str | None = None


class SegmentResponse(msgspec.Struct):
    success: bool
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_message = msgspec.json.Decoder(_Message)
_context = msgspec.json.Decoder(_Context)
_batch = msgspec.json.Decoder(_BatchEnvelope)
_write_key = msgspec.json.Decoder(_WriteKey)
_encoder = msgspec.json.Encoder()


class _Clock(msgspec.Struct, frozen=True):
    """What skew correction needs: when the request arrived, and the threshold."""

    received_at: datetime
    threshold: timedelta


def _ident(value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _reject(raw: bytes, field: str, code: str, message: str) -> Rejection:
    return Rejection([FieldError(field, code, message)], raw)


def _merge_context(fields: dict[str, msgspec.Raw], batch_context: dict[str, msgspec.Raw]) -> FieldError | None:
    own = fields.get("context")
    if own is None or bytes(own) == b"null":
        fields["context"] = msgspec.Raw(_encoder.encode(batch_context))
        return None
    try:
        merged = {**batch_context, **_fields.decode(own)}
    except msgspec.ValidationError:
        return FieldError("context", "invalid_type", "context must be an object")
    fields["context"] = msgspec.Raw(_encoder.encode(merged))
    return None


def _check(kind: str, message: _Message, fields: dict[str, msgspec.Raw]) -> FieldError | None:
    """Segment's own rules for a message of this kind."""
    for name in _OBJECT_FIELDS:
        value = fields.get(name)
        if value is not None and not bytes(value).startswith((b"{", b"null")):
            return FieldError(name, "invalid_type", f"{name} must be an object")
    if _ident(message.userId) is None and _ident(message.anonymousId) is None:
        return FieldError("userId", "required", "a message needs a userId or an anonymousId")
    if kind == "track":
        if not message.event:
            return FieldError("event", "required", "a track message needs an event name")
        if len(message.event) > MAX_TYPE_LENGTH:
            return FieldError("event", "too_long", f"event names are at most {MAX_TYPE_LENGTH} characters")
    elif kind == "group" and _ident(message.groupId) is None:
        return FieldError("groupId", "required", "a group message needs a groupId")
    elif kind == "alias":
        if _ident(message.userId) is None:
            return FieldError("userId", "required", "an alias message needs a userId")
        if _ident(message.previousId) is None:
            return FieldError("previousId", "required", "an alias message needs a previousId")
    return None


def _times(
    message: _Message, batch_sent_at: datetime | None, clock: _Clock | None
) -> tuple[datetime | None, datetime | None] | FieldError:
    """The event time, and the `sentAt` it was corrected with (None when not corrected)."""
    try:
        when = None if message.timestamp is None else parse_time(message.timestamp)
    except ValueError as exc:
        return FieldError("timestamp", "invalid_format", str(exc))
    try:
        sent_at = batch_sent_at if message.sentAt is None else parse_time(message.sentAt)
    except ValueError as exc:
        return FieldError("sentAt", "invalid_format", str(exc))
    if when is None or sent_at is None or clock is None:
        return when, None
    if abs(sent_at - clock.received_at) <= clock.threshold:
        return when, None
    try:
        return clock.received_at - (sent_at - when), sent_at
    except OverflowError:
        return FieldError("timestamp", "out_of_range", "timestamp is too far from sentAt")


def _prepare(
    raw: bytes, kind: str | None, batch_context: dict[str, msgspec.Raw] | None
) -> tuple[dict[str, msgspec.Raw], bytes] | Rejection:
    """The message's top-level fields and the message as read: without `writeKey`, with the
    route's type and the batch's context filled in. That is what is kept (and quarantined),
    so a replay reads it the same way."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return _reject(raw, "", "too_large", f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
    if not raw.isascii() and not _utf8(raw):
        return _reject(raw, "", "invalid_utf8", "a message must be valid UTF-8")
    try:
        fields = _fields.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _reject(raw, "", "invalid_type", "a message must be a JSON object")
    changed = fields.pop("writeKey", None) is not None
    if kind is not None:
        fields["type"] = msgspec.Raw(_encoder.encode(kind))
        changed = True
    if batch_context:
        if (problem := _merge_context(fields, batch_context)) is not None:
            return Rejection([problem], raw)
        changed = True
    return fields, _encoder.encode(fields) if changed else raw


def _classify(message: _Message, fields: dict[str, msgspec.Raw]) -> tuple[str, str | None] | FieldError:
    """The canonical type and channel of a valid message, or what is wrong with it."""
    if message.type is None:
        return FieldError("type", "required", f"type is required: one of {', '.join(KINDS)}")
    if message.type not in KINDS:
        return FieldError("type", "invalid", f"type must be one of {', '.join(KINDS)}")
    if (problem := _check(message.type, message, fields)) is not None:
        return problem
    channel = message.channel
    context = fields.get("context")
    if context is not None and bytes(context).startswith(b"{"):
        try:
            channel = _context.decode(context).channel or channel
        except msgspec.ValidationError as exc:
            return field_error(exc, "context")
    if message.type == "track":
        assert message.event is not None  # _check made sure
        return message.event, channel
    return message.type, channel


def read_message(
    raw: bytes,
    kind: str | None = None,
    *,
    batch_sent_at: datetime | None = None,
    batch_context: dict[str, msgspec.Raw] | None = None,
    clock: _Clock | None = None,
) -> EventDraft | Rejection:
    """One Segment message → a draft, or a rejection with the reasons; never raises.

    `kind` is the call a single-message route names (it overrides the body's `type`).
    Without a `clock` (a replay from quarantine) no skew correction is applied.
    """
    prepared = _prepare(raw, kind, batch_context)
    if isinstance(prepared, Rejection):
        return prepared
    fields, raw = prepared
    try:
        message = _message.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection([field_error(exc)], raw)
    classified = _classify(message, fields)
    if isinstance(classified, FieldError):
        return Rejection([classified], raw)
    times = _times(message, batch_sent_at, clock)
    if isinstance(times, FieldError):
        return Rejection([times], raw)
    when, corrected_with = times
    data = {name: value for name, value in fields.items() if name not in _ENVELOPE}
    if message.type == "track":
        del data["event"]
    if corrected_with is not None:
        data["originalTimestamp"] = fields["timestamp"]
        data["sentAt"] = msgspec.Raw(_encoder.encode(corrected_with))
    return EventDraft(
        type=classified[0],
        subject=_ident(message.userId) or _ident(message.anonymousId),
        source=SOURCE,
        channel=classified[1],
        time=when,
        idempotency_key=message.messageId,
        data=msgspec.Raw(_encoder.encode(data)),
        raw=raw,
    )


def read_item(raw: bytes) -> EventDraft | Rejection:
    """A quarantined message, as `read_message` kept it (its type and context filled in)."""
    return read_message(raw)


async def _read_capped(request: Request, limit: int, what: str) -> bytes:
    """The body, refused with a 400 (as Segment does) as soon as it passes `limit` bytes."""
    too_large = bad_request(f"{what} exceeds the limit of {limit} bytes", code="too_large")
    length = request.headers.get("content-length", "")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if length.isdigit() and encoding in ("", "identity") and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _check_json(body: bytes, max_depth: int) -> None:
    if not body.strip():
        raise bad_request("request body is empty: send a JSON object", code="required")
    if nesting_exceeds(body, max_depth):
        raise bad_request(f"JSON nests deeper than {max_depth} levels", code="too_deep")
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            message = f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}"
            raise bad_request(message, code="invalid_utf8") from None


def _decode_error(exc: Exception) -> ApiError:
    if isinstance(exc, msgspec.ValidationError):
        return ApiError(400, "request body is not valid", [field_error(exc)])
    return bad_request(f"request body is not valid JSON: {exc}", code="invalid_json")


class _Endpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        seconds = settings.segment_skew_seconds
        self.threshold = timedelta(seconds=SKEW_THRESHOLD_SECONDS if seconds is None else seconds)

    async def authenticate(self, request: Request, limit: int, what: str) -> tuple[Principal, bytes]:
        """The principal and the (capped) body. A key in the headers is checked before the body
        is read; the body's `writeKey` stands in when no header carries one (Segment's body
        authentication), and must be the same key when one does."""
        headers: Iterable[tuple[bytes, bytes]] = request.scope["headers"]
        if read_credentials(headers).key:
            await self.services.auth.authenticate(headers, "ingest")
        body = await self._body(request, limit, what)
        try:
            write_key = _write_key.decode(body).writeKey
        except msgspec.ValidationError as exc:
            if field_error(exc).field == "writeKey":  # a key of the wrong type: never "no key"
                raise _decode_error(exc) from None
            write_key = None  # not an object: the route's decoding says what is wrong
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            write_key = None
        return await self.services.auth.authenticate(headers, "ingest", write_key), body

    async def _body(self, request: Request, limit: int, what: str) -> bytes:
        try:
            return await _read_capped(request, limit, what)
        except ClientDisconnect:
            raise ApiError(400, "client disconnected while sending the body") from None

    async def respond(self, principal: Principal, items: list[EventDraft | Rejection], clock: _Clock) -> Response:
        ingested = await self.services.pipeline.ingest(principal, items, dialect=NAME, received_at=clock.received_at)
        result = ingested.result
        body = SegmentResponse(True, result.accepted, result.duplicates, result.rejected, result.results)
        return json_response(body)

    def clock(self) -> _Clock:
        return _Clock(datetime.now(UTC), self.threshold)


class _SingleEndpoint(_Endpoint):
    """`/v1/track` and its siblings: the body is one message."""

    def __init__(self, services: Services, kind: str) -> None:
        super().__init__(services)
        self.kind = kind

    async def __call__(self, request: Request) -> Response:
        principal, body = await self.authenticate(request, MAX_MESSAGE_BYTES, "a message")
        _check_json(body, self.services.settings.max_json_depth)
        try:
            _fields.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise _decode_error(exc) from None
        clock = self.clock()
        return await self.respond(principal, [read_message(body, self.kind, clock=clock)], clock)


class _BatchEndpoint(_Endpoint):
    """`/v1/batch`: {"batch": [message, ...], "sentAt"?, "context"?}."""

    async def __call__(self, request: Request) -> Response:
        principal, body = await self.authenticate(request, MAX_BATCH_BYTES, "a batch")
        _check_json(body, self.services.settings.max_json_depth)
        try:
            envelope = _batch.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise _decode_error(exc) from None
        if len(envelope.batch) > MAX_BATCH_MESSAGES:
            raise bad_request(
                f"a batch may carry at most {MAX_BATCH_MESSAGES} messages; this one has {len(envelope.batch)}",
                "batch",
                "too_many",
            )
        try:
            sent_at = None if envelope.sentAt is None else parse_time(envelope.sentAt)
        except ValueError as exc:
            raise bad_request(str(exc), "sentAt", "invalid_format") from None
        # The batch's context goes into every message: a number in it that no message could
        # keep refuses the request, as a bad `sentAt` does, rather than each message.
        numbers = [
            e for k, v in (envelope.context or {}).items() for e in out_of_range_numbers(bytes(v), f"context.{k}")
        ]
        if numbers:
            raise ApiError(400, "the batch's context holds a number out of range", numbers[:MAX_NUMBER_ERRORS])
        clock = self.clock()
        items = [
            read_message(bytes(raw), batch_sent_at=sent_at, batch_context=envelope.context, clock=clock)
            for raw in envelope.batch
        ]
        return await self.respond(principal, items, clock)


def routes(services: Services) -> list[BaseRoute]:
    found: list[BaseRoute] = [Route("/v1/batch", _BatchEndpoint(services).__call__, methods=["POST"])]
    for kind in KINDS:
        found.append(Route(f"/v1/{kind}", _SingleEndpoint(services, kind).__call__, methods=["POST"]))
    return found
