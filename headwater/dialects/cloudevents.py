"""CloudEvents 1.0 over HTTP: `POST /v1/cloudevents` in all three content modes.

- structured: `Content-Type: application/cloudevents+json`, the body is one event in the JSON
  event format;
- batched: `Content-Type: application/cloudevents-batch+json`, the body is a JSON array of
  such events (an empty array is a valid, empty batch);
- binary: the attributes are `ce-*` headers (percent-decoded), `Content-Type` is the
  `datacontenttype`, and the body is the event's data; without a `Content-Type`, a body that
  is JSON is read as JSON (as the CloudEvents SDKs' `from_http` reads it).

Any other `application/cloudevents…` type (another event format) and a request that is none of
the three get a 415. Authentication is the usual Headwater key (`Authorization: Bearer`,
`X-API-Key` or a Basic-auth username). `OPTIONS /v1/cloudevents` answers the CloudEvents
webhook validation handshake (`WebHook-Request-Origin` → `WebHook-Allowed-Origin`).

Validation (a failing event is rejected and quarantined; in a batch the others still count):
`specversion` must be `"1.0"`; `id`, `source` and `type` are required non-empty strings
(`type` at most 128 characters, `id` and `source` at most 256); `subject`, `time` (RFC 3339),
`datacontenttype` and `dataschema` must be non-empty strings when present; attribute names are
lower-case ASCII letters and digits only; extension values are strings, booleans or 32-bit
integers (`null` means absent); `data` and `data_base64` are mutually exclusive.

Mapping to the canonical event: `type`, `source`, `subject` and `time` map one to one (no
`time` → the receive time); the idempotency key is the JSON array `[source, id]` (for
example `["/orders","A-1"]`), so the same `id` from two sources never collides and a redelivery
of the same event is a duplicate. `data` is:

- the event's data when it is a JSON object, kept verbatim;
- `{"data": value}` when it is any other JSON value, or text (a `text/*` or XML content type);
- `{"data_base64": "..."}` for binary data (binary mode with a non-JSON, non-text content
  type, or with none and a body that is not JSON, or `data_base64` in the JSON format);
- `{}` when there is no data.

Data whose content type is JSON (`application/json`, `text/json`, `*+json`) must be JSON,
whichever mode carried it. Attributes that have no canonical field — `datacontenttype`
(unless it is plain `application/json`), `dataschema` and every extension attribute — are kept
in `data` under the reserved key `"cloudevents"`, e.g. `{"amount": 3, "cloudevents":
{"dataschema": "...", "traceparent": "..."}}`; the key is added only when there is something
to keep, and an event whose data already has a `cloudevents` member is then rejected.

Responses carry Headwater's per-event result body (`accepted`, `duplicates`, `rejected`,
`results`). The status is 202 Accepted when at least one event was accepted or was a
duplicate (or the batch was empty), and 400 when every event of the request was rejected, so
a webhook sender sees a single bad event as the client error it is (it is still kept in the
quarantine).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import json_response
from headwater.errors import ApiError, bad_request
from headwater.events import EMPTY_OBJECT, EventDraft, FieldError, Rejection
from headwater.parsing import MAX_TIME_LENGTH, field_error, nesting_exceeds, parse_time
from headwater.services import Services

NAME = "cloudevents"
STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
RESERVED_KEY = "cloudevents"
DEFAULT_MAX_DEPTH = 64
INT32 = (-(2**31), 2**31 - 1)

_NAME = re.compile(r"[a-z0-9]+")
_CONTEXT_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
_DATA_MEMBERS = ("data", "data_base64")

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Attributes(msgspec.Struct):
    """The context attributes of a CloudEvent (1.0); extensions are read separately."""

    id: Text
    source: Text
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    subject: Text | None = None
    time: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TIME_LENGTH)] | None = None
    datacontenttype: Text | None = None
    dataschema: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    data_base64: str | None = None


_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_items = msgspec.json.Decoder(list[msgspec.Raw])
_attributes = msgspec.json.Decoder(_Attributes)
_specversion = msgspec.json.Decoder(str)
_extension = msgspec.json.Decoder(str | int | float | bool | None)
_any_json = msgspec.json.Decoder(msgspec.Raw)
_encoder = msgspec.json.Encoder()
_NOT_AN_ATTRIBUTE: Any = object()


def _media(content_type: str | None) -> str | None:
    """The media type of a Content-Type value, lower-cased and without parameters."""
    if content_type is None:
        return None
    return content_type.partition(";")[0].strip().lower() or None


def _is_json(media: str | None) -> bool:
    return media is not None and (media in ("application/json", "text/json") or media.endswith("+json"))


def _is_text(media: str | None) -> bool:
    return media is not None and (media.startswith("text/") or media == "application/xml" or media.endswith("+xml"))


def _wrap(name: str, value: object) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode({name: value}))


def _json_data(value: msgspec.Raw) -> msgspec.Raw:
    """A JSON value as canonical data: an object as it is, anything else wrapped."""
    raw = bytes(value)
    if raw == b"null":
        return EMPTY_OBJECT
    if raw.startswith(b"{"):
        return value
    return _wrap("data", value)


def _bytes_data(payload: bytes, media: str | None, max_depth: int) -> msgspec.Raw | FieldError:
    """Binary data as canonical data, read by its content type."""
    if not payload:
        return EMPTY_OBJECT
    if _is_json(media):
        try:
            text = payload.decode()
            if nesting_exceeds(payload, max_depth):
                return FieldError("data", "too_deep", f"data nests deeper than {max_depth} levels")
            return _json_data(_any_json.decode(text))
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError) as exc:
            return FieldError("data", "invalid_json", f"data has a JSON content type but is not JSON: {exc}")
    if _is_text(media):
        try:
            return _wrap("data", payload.decode())
        except UnicodeDecodeError:
            pass
    return _wrap("data_base64", base64.b64encode(payload).decode())


def _extensions(fields: dict[str, msgspec.Raw]) -> dict[str, msgspec.Raw] | FieldError:
    """The extension attributes with a value, after checking every member's name and type."""
    found: dict[str, msgspec.Raw] = {}
    for name, value in fields.items():
        if name in _DATA_MEMBERS:
            continue
        if not _NAME.fullmatch(name):
            return FieldError(name, "invalid_name", "attribute names are lower-case ASCII letters and digits only")
        if name in _CONTEXT_ATTRIBUTES:
            continue
        try:
            decoded = _extension.decode(value)
        except msgspec.ValidationError:
            decoded = _NOT_AN_ATTRIBUTE
        # JSON has one kind of number: 3.0 is the integer 3, 3.5 is no integer at all.
        if decoded is _NOT_AN_ATTRIBUTE or (isinstance(decoded, float) and not decoded.is_integer()):
            return FieldError(name, "invalid_type", "extension attributes are strings, integers or booleans")
        if isinstance(decoded, int | float) and not isinstance(decoded, bool) and not INT32[0] <= decoded <= INT32[1]:
            return FieldError(name, "out_of_range", "integer attributes are 32-bit signed integers")
        if decoded is not None:
            found[name] = value
    return found


def _data(fields: dict[str, msgspec.Raw], attributes: _Attributes, max_depth: int) -> msgspec.Raw | FieldError:
    data = fields.get("data")
    if data is not None and bytes(data) == b"null":
        data = None
    if data is not None and attributes.data_base64 is not None:
        return FieldError("data_base64", "conflict", "an event has data or data_base64, not both")
    if attributes.data_base64 is not None:
        try:
            payload = base64.b64decode(attributes.data_base64, validate=True)
        except (binascii.Error, ValueError):
            return FieldError("data_base64", "invalid_format", "data_base64 is not valid base64")
        return _bytes_data(payload, _media(attributes.datacontenttype), max_depth)
    return EMPTY_OBJECT if data is None else _json_data(data)


def _keep(data: msgspec.Raw, extras: dict[str, msgspec.Raw]) -> msgspec.Raw | FieldError:
    """`data` with the attributes that have no canonical field under the reserved key."""
    if not extras:
        return data
    members = _fields.decode(data)
    if RESERVED_KEY in members:
        message = f"data has a {RESERVED_KEY!r} member, where this event's extra attributes go"
        return FieldError(f"data.{RESERVED_KEY}", "reserved", message)
    members[RESERVED_KEY] = msgspec.Raw(_encoder.encode(extras))
    return msgspec.Raw(_encoder.encode(members))


def _check_version(fields: dict[str, msgspec.Raw]) -> FieldError | None:
    raw = fields.get("specversion")
    if raw is None:
        return FieldError("specversion", "required", "specversion is required")
    try:
        version = _specversion.decode(raw)
    except msgspec.ValidationError:
        return FieldError("specversion", "invalid_type", "specversion must be a string")
    if version != SPECVERSION:
        return FieldError("specversion", "unsupported", f'specversion must be "{SPECVERSION}"')
    return None


def read_event(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> EventDraft | Rejection:
    """One event in the JSON event format → a draft, or a rejection with the reasons."""
    if not raw.isascii() and not _utf8(raw):
        return Rejection([FieldError("", "invalid_utf8", "an event must be valid UTF-8")], raw)
    try:
        fields = _fields.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return Rejection([FieldError("", "invalid_type", "an event must be a JSON object")], raw)
    if (problem := _check_version(fields)) is not None:
        return Rejection([problem], raw)
    try:
        attributes = _attributes.decode(raw)
    except msgspec.ValidationError as exc:
        return Rejection([field_error(exc)], raw)
    extensions = _extensions(fields)
    if isinstance(extensions, FieldError):
        return Rejection([extensions], raw)
    when = None
    if attributes.time is not None:
        try:
            when = parse_time(attributes.time)
        except ValueError as exc:
            return Rejection([FieldError("time", "invalid_format", str(exc))], raw)
    data = _data(fields, attributes, max_depth)
    if isinstance(data, FieldError):
        return Rejection([data], raw)
    extras: dict[str, msgspec.Raw] = {}
    if attributes.datacontenttype is not None and _media(attributes.datacontenttype) != "application/json":
        extras["datacontenttype"] = fields["datacontenttype"]
    if attributes.dataschema is not None:
        extras["dataschema"] = fields["dataschema"]
    data = _keep(data, {**extras, **extensions})
    if isinstance(data, FieldError):
        return Rejection([data], raw)
    return EventDraft(
        type=attributes.type,
        subject=attributes.subject,
        source=attributes.source,
        time=when,
        idempotency_key=_encoder.encode([attributes.source, attributes.id]).decode(),
        data=data,
        raw=raw,
    )


def read_item(raw: bytes) -> EventDraft | Rejection:
    """A quarantined event: always kept in the JSON event format (binary mode is converted)."""
    return read_event(raw)


def binary_event(
    headers: list[tuple[bytes, bytes]], body: bytes, max_depth: int = DEFAULT_MAX_DEPTH
) -> tuple[bytes, list[FieldError]]:
    """A binary-mode request as the same event in the JSON format, plus header problems.

    The data goes in as `data` when its content type is JSON and it parses, else as
    `data_base64`, so reading the result applies the same rules as structured mode.
    Without a content type, a body that is JSON (within the depth limit) is JSON too, as the
    CloudEvents SDKs' `from_http` reads it; any other stays opaque bytes.
    """
    members: dict[str, object] = {}
    problems: list[FieldError] = []
    content_type: str | None = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value.decode("latin-1")
            continue
        if not name.startswith(b"ce-"):
            continue
        attribute = name[3:].decode("latin-1")
        try:
            decoded = unquote_to_bytes(value).decode()
        except UnicodeDecodeError:
            problems.append(FieldError(attribute, "invalid_encoding", "header value is not UTF-8 once percent-decoded"))
            decoded = unquote_to_bytes(value).decode(errors="replace")
        if attribute in members:
            problems.append(FieldError(attribute, "duplicate", f"header {name.decode('latin-1')} is sent twice"))
        if attribute in _DATA_MEMBERS:
            problems.append(FieldError(attribute, "invalid_name", f"{attribute} is not an attribute"))
            continue
        members[attribute] = decoded
    if content_type is not None:
        members["datacontenttype"] = content_type
    if body:
        data = _json_body(body, _media(content_type), max_depth)
        if data is None:
            members["data_base64"] = base64.b64encode(body).decode()
        else:
            members["data"] = data
    return _encoder.encode(members), problems


def _json_body(body: bytes, media: str | None, max_depth: int) -> msgspec.Raw | None:
    """A binary-mode body as JSON, when its content type is JSON or it has none, and it parses."""
    if not (media is None or _is_json(media)) or not _utf8(body):
        return None
    try:
        data = _any_json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    # Labelled JSON too deep is a 400 before this; an unlabelled body too deep is just bytes.
    if media is None and nesting_exceeds(body, max_depth):
        return None
    return data


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _check_body(body: bytes, max_depth: int) -> None:
    if not body.strip():
        raise bad_request("request body is empty", code="required")
    if nesting_exceeds(body, max_depth):
        raise bad_request(f"JSON nests deeper than {max_depth} levels", code="too_deep")
    if not body.isascii() and not _utf8(body):
        raise bad_request("request body is not valid UTF-8", code="invalid_utf8")


def _unsupported(media: str | None) -> ApiError:
    what = f"Content-Type {media!r}" if media else "a request without Content-Type or ce-* headers"
    return ApiError(
        415,
        f"{what} is not a CloudEvent: send {STRUCTURED}, {BATCHED}, "
        "or binary mode (ce-specversion, ce-id, ce-source, ce-type headers)",
    )


class _Endpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    def items(self, media: str | None, headers: list[tuple[bytes, bytes]], body: bytes) -> list[EventDraft | Rejection]:
        depth = self.settings.max_json_depth
        if media == STRUCTURED:
            _check_body(body, depth)
            try:
                _fields.decode(body)
            except msgspec.ValidationError:
                raise bad_request("a structured-mode body must be one JSON object", code="invalid_type") from None
            except (msgspec.DecodeError, RecursionError) as exc:
                raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
            return [read_event(body, depth)]
        if media == BATCHED:
            _check_body(body, depth)
            try:
                raws = _items.decode(body)
            except msgspec.ValidationError:
                raise bad_request("a batched-mode body must be a JSON array of events", code="invalid_type") from None
            except (msgspec.DecodeError, RecursionError) as exc:
                raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
            limit = self.settings.max_batch_events
            if len(raws) > limit:
                raise ApiError(
                    413,
                    f"a request may carry at most {limit} events; this one has {len(raws)}",
                    [FieldError("", "too_many", f"at most {limit} events per request")],
                )
            return [read_event(bytes(raw), depth) for raw in raws]
        if _is_json(media) and body.strip() and nesting_exceeds(body, depth):
            raise bad_request(f"JSON nests deeper than {depth} levels", code="too_deep")
        raw, problems = binary_event(headers, body, depth)
        return [Rejection(problems, raw) if problems else read_event(raw, depth)]

    async def post(self, request: Request) -> Response:
        principal = await self.services.auth.authenticate(request.scope["headers"], "ingest")
        headers: list[tuple[bytes, bytes]] = request.scope["headers"]
        media = _media(request.headers.get("content-type"))
        binary = any(name.startswith(b"ce-") for name, _ in headers)
        if media not in (STRUCTURED, BATCHED) and (
            (media is not None and media.startswith("application/cloudevents")) or not binary
        ):
            raise _unsupported(media)
        items = self.items(media, headers, await request.body())
        result = (await self.services.pipeline.ingest(principal, items, dialect=NAME)).result
        status = 400 if items and result.accepted + result.duplicates == 0 else 202
        return json_response(result, status)

    async def options(self, request: Request) -> Response:
        headers = {"Allow": "OPTIONS, POST"}
        if origin := request.headers.get("webhook-request-origin"):
            headers["WebHook-Allowed-Origin"] = origin
            headers["WebHook-Allowed-Rate"] = "*"
        return Response(None, 200, headers)


def routes(services: Services) -> list[BaseRoute]:
    endpoint = _Endpoint(services)
    return [
        Route("/v1/cloudevents", endpoint.post, methods=["POST"]),
        Route("/v1/cloudevents", endpoint.options, methods=["OPTIONS"]),
    ]
