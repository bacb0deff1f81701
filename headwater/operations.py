"""The documentation of every operation, keyed by (method, path), for `headwater.openapi`.

Request and response schemas are the msgspec types the handlers decode and encode. Where a
handler reads a body by hand (the dialects check fields against specs; the native API reads
an event or a batch), the types below are built from the same specs, or spell out the shapes
it accepts. `refine` adds what a Struct cannot say (the trigger condition grammar, exactly one
of two fields, extension attributes) to the generated components.

Bodies that are validated per event (native ingest, Segment, the gamification batch,
CloudEvents batches) are documented as the typed shape *or* what the server still reads and
reports on per event, since a readable body is answered with per-event results there, not 400.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal, get_args

import msgspec
from starlette.routing import BaseRoute

from headwater.api import (
    audit,
    catalog,
    dead_letters,
    effects,
    erasures,
    events,
    gamification_docs,
    keys,
    limits,
    overview,
    quarantine,
    schemas,
    triggers,
    webhooks,
)
from headwater.api.health import Health, NotReady, Ready
from headwater.dialects import analytics, cloudevents, customer_events, data_events, gamification, segment
from headwater.errors import ErrorBody
from headwater.events import Event, IngestResult
from headwater.keys import CreatedKey
from headwater.openapi import (
    AUTH_ERRORS,
    BODY_ERRORS,
    JSON_MEMBERS,
    JSON_VALUE,
    NO_AUTH,
    WRITE_KEY,
    Body,
    Doc,
    JsonObject,
    Param,
    Reply,
    TimeText,
    app_operations,
    build_document,
    document_operations,
    struct_from_specs,
)
from headwater.parsing import RANGE_BOUND_SCHEMA
from headwater.processing.conditions import EVENT_FIELDS, MAX_LIST_VALUES, MAX_PATTERN_LENGTH, OPERATORS
from headwater.processing.rules import JOURNEY_MODES, MAX_DURATION_SECONDS, ActionType, TriggerIn
from headwater.processing.status import Status
from headwater.processing.webhooks import MAX_URL_LENGTH
from headwater.storage.records import DeadLetter, SubjectProfile
from headwater.storage.registry import KeyRecord, SchemaVersion

Key = tuple[str, str]
logger = logging.getLogger("headwater")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# Parameters shared by the list routes.

Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
TimeBound = Annotated[str, msgspec.Meta(extra_json_schema=RANGE_BOUND_SCHEMA)]
LIMIT = Param("limit", Limit, description="Page size, 1-1000 (default 100).")
EVENT_CURSOR = Param(
    "cursor",
    # Empty is no cursor: the first page.
    Annotated[str, msgspec.Meta(pattern=f"^({events.CURSOR_PATTERN.strip('^$')})?$")],
    description="`next_cursor` of the previous page (empty: the first page).",
)
POSITION_CURSOR = Param(
    "cursor",
    Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]{1,19}_[0-9]{1,19}_[0-9]{1,19}$")],
    description="`next_cursor` of the previous page.",
)


def _time_range(what: str) -> tuple[Param, Param]:
    return (
        Param("from", TimeBound, description=f"{what} at or after this date or time (ISO 8601; no offset is UTC)."),
        Param("to", TimeBound, description=f"{what} before this time; a date covers that whole day."),
    )


# The native API.


class EventBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch of native events (1-1,000); each gets its own result, a bad one never sinks the rest."""

    events: Annotated[list[events.EventIn], msgspec.Meta(min_length=1)]


# What the native ingest route reads besides the typed forms: a batch body must be exactly
# {"events": [one or more items]}; any other object is one event, reported on per event.
NATIVE_BODY = {
    "anyOf": [
        _ref("EventIn"),
        _ref("EventBatch"),
        {"type": "object", "required": ["type"]},
        {"type": "object", "not": {"required": ["events"]}},
        {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "minItems": 1}},
            "additionalProperties": False,
        },
    ],
}

# Segment's Tracking API: the typed fields of each call. Every other field is kept in `data`.

SegmentId = segment.Id | None
WriteKey = Annotated[
    str,
    msgspec.Meta(description="The write key, for a request without a key header; beside one, the same key (else 400)."),
]


class _SegmentCommon(msgspec.Struct, kw_only=True):
    userId: SegmentId = None
    anonymousId: SegmentId = None
    messageId: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    timestamp: TimeText | None = None
    sentAt: TimeText | None = None
    context: JsonObject | None = None
    integrations: JsonObject | None = None
    writeKey: WriteKey | None = None


class SegmentTrack(_SegmentCommon, kw_only=True):
    """`track`: an action; `event` is the canonical type."""

    event: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    properties: JsonObject | None = None


class SegmentIdentify(_SegmentCommon, kw_only=True):
    """`identify`: who the user is."""

    traits: JsonObject | None = None


class SegmentPage(_SegmentCommon, kw_only=True):
    """`page` (and `screen`): a view."""

    name: str | None = None
    category: str | None = None
    properties: JsonObject | None = None


class SegmentGroup(_SegmentCommon, kw_only=True):
    """`group`: the user joins `groupId`."""

    groupId: segment.Id
    traits: JsonObject | None = None


class SegmentAlias(_SegmentCommon, kw_only=True):
    """`alias`: `previousId` becomes `userId`."""

    userId: segment.Id
    previousId: segment.Id


class SegmentBatch(msgspec.Struct):
    """`/v1/batch`: up to 2,500 messages (each with its own `type`), at most 500 KB."""

    batch: Annotated[list[Any], msgspec.Meta(max_length=segment.MAX_BATCH_MESSAGES)]
    sentAt: TimeText | None = None
    context: JsonObject | None = None
    writeKey: WriteKey | None = None


SEGMENT_TYPES: dict[str, Any] = {
    "track": SegmentTrack,
    "identify": SegmentIdentify,
    "page": SegmentPage,
    "screen": SegmentPage,
    "group": SegmentGroup,
    "alias": SegmentAlias,
}

# CloudEvents 1.0 in the JSON event format.

CeText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CloudEvent(msgspec.Struct):
    """A CloudEvent (1.0) in the JSON event format. Extension attributes (lower-case ASCII letters
    and digits) hold strings, booleans or 32-bit integers; `data` and `data_base64` exclude each other."""

    specversion: Literal["1.0"]
    id: CeText
    source: CeText
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    subject: CeText | None = None
    time: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=64, extra_json_schema={"format": "date-time"})] | None
    ) = None
    datacontenttype: CeText | None = None
    dataschema: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    data: Any = None
    data_base64: Annotated[
        str, msgspec.Meta(pattern=r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
    ] | (None) = None


CLOUDEVENT_BATCH = {
    "type": "array",
    "description": "A batch of CloudEvents: 202 when at least one is accepted (or the batch is empty).",
    "anyOf": [{"maxItems": 0}, {"contains": _ref("CloudEvent")}],
}

# Dialect request bodies, built from the specs their handlers check.

DataEventIn = struct_from_specs("DataEventIn", data_events.SPECS, "One event of the data events API (seed 000).")


class DataEventsBody(msgspec.Struct, forbid_unknown_fields=True):
    """1-1,000 events, all or nothing: one invalid event and nothing is stored."""

    events: Annotated[list[DataEventIn], msgspec.Meta(min_length=1)]  # type: ignore[valid-type]


AnalyticsEvent = struct_from_specs("AnalyticsEvent", analytics.SPECS, "One analytics event (seed 001).")
CustomerEvent = struct_from_specs("CustomerEvent", customer_events.SPECS, "One customer event (seed 002).")
GamificationEvent = struct_from_specs("GamificationEvent", gamification.SPECS, "One gamification event (seed 003).")


class GamificationBatch(msgspec.Struct, forbid_unknown_fields=True):
    """1-100 events, each validated on its own."""

    events: Annotated[list[GamificationEvent], msgspec.Meta(min_length=1)]  # type: ignore[valid-type]


GAMIFICATION_BATCH = {
    "anyOf": [
        _ref("GamificationBatch"),
        {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "minItems": 1}},
            "additionalProperties": False,
        },
    ]
}

# Request shapes that take one of two forms.


class ReplayByIds(msgspec.Struct, forbid_unknown_fields=True):
    """Replay these quarantined items."""

    ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=quarantine.MAX_REPLAY)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=quarantine.MAX_REPLAY)] = quarantine.MAX_REPLAY


class ReplayByFilter(msgspec.Struct, forbid_unknown_fields=True):
    """Replay up to `limit` quarantined items that match the filter."""

    filter: quarantine.ReplayFilter
    limit: Annotated[int, msgspec.Meta(ge=1, le=quarantine.MAX_REPLAY)] = quarantine.MAX_REPLAY


class DryRunInline(msgspec.Struct, forbid_unknown_fields=True):
    """A sample event against a trigger definition sent along."""

    event: events.EventIn
    trigger: TriggerIn


class DryRunStored(msgspec.Struct, forbid_unknown_fields=True):
    """A sample event against a stored trigger."""

    event: events.EventIn
    trigger_id: str


class TriggerPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Fields to change; the merged definition is validated as a whole."""

    name: Any = None
    event_types: Any = None
    action: Any = None
    conditions: Any = None
    window: Any = None
    cooldown: Any = None
    priority: Any = None
    enabled: Any = None


# What a Struct cannot say, added to the generated components.


def _upto(n: int) -> str:
    """A regex alternation matching the integers 1..n, without leading zeros."""
    digits = str(n)
    options = []
    for width in range(1, len(digits)):
        options.append("[1-9]" + "[0-9]" * (width - 1))
    # Numbers of n's width, at most n: walk its digits.
    for i, digit in enumerate(digits):
        low = 1 if i == 0 else 0
        last = i == len(digits) - 1
        top = int(digit) if last else int(digit) - 1
        if top >= low:
            options.append(digits[:i] + f"[{low}-{top}]" + "[0-9]" * (len(digits) - i - 1))
    return "|".join(options)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_PATTERN = "^(" + "|".join(f"({_upto(MAX_DURATION_SECONDS // s)}){u}" for u, s in _UNITS.items()) + ")$"
FIELD_PATH = {
    "anyOf": [{"enum": list(EVENT_FIELDS)}, {"type": "string", "pattern": r"^data(\.[^.]+){0,31}$"}],
    "description": "An envelope field or a path into data, e.g. `data.amount`.",
}
SCALAR = {"type": ["string", "number", "boolean", "null"]}
_VALUES: dict[str, dict[str, Any]] = {
    "eq": SCALAR,
    "neq": SCALAR,
    "contains": SCALAR,
    "gt": {"type": ["string", "number"]},
    "gte": {"type": ["string", "number"]},
    "lt": {"type": ["string", "number"]},
    "lte": {"type": ["string", "number"]},
    "in": {"type": "array", "maxItems": MAX_LIST_VALUES, "items": SCALAR},
    "nin": {"type": "array", "maxItems": MAX_LIST_VALUES, "items": SCALAR},
    "exists": {"type": "boolean"},
    "starts_with": {"type": "string"},
    "matches": {"type": "string", "maxLength": MAX_PATTERN_LENGTH, "format": "regex"},
}
assert set(_VALUES) == set(OPERATORS)


def _leaf(op: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"field": FIELD_PATH, "op": {"const": op}, "value": _VALUES[op]},
        "required": ["field", "op"] if op == "exists" else ["field", "op", "value"],
        "additionalProperties": False,
    }


def _group(key: str, child: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: child}, "required": [key], "additionalProperties": False}


CONDITION = {
    "description": "A condition tree: `all`, `any` (non-empty lists), `not`, or a leaf `{field, op, value}`; "
    "at most 16 deep and 256 nodes.",
    "anyOf": [
        _group("all", {"type": "array", "minItems": 1, "items": _ref("Condition")}),
        _group("any", {"type": "array", "minItems": 1, "items": _ref("Condition")}),
        _group("not", _ref("Condition")),
        *(_leaf(op) for op in OPERATORS),
    ],
}


def _action(type_: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"type": {"const": type_}, "config": {"type": "object", **config}},
        "required": ["type"] if not config.get("required") else ["type", "config"],
        "additionalProperties": False,
    }


_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
# What `check_action` requires of each action type's config; a type not listed takes any object.
_ACTION_CONFIGS: dict[str, dict[str, Any]] = {
    "recommend": {},
    "webhook": {"properties": {"endpoint_id": _NAME}, "required": ["endpoint_id"]},
    "journey_enroll": {
        "properties": {"journeyId": _NAME, "mode": {"enum": list(JOURNEY_MODES)}},
        "required": ["journeyId"],
    },
    "update_attribute": {
        "properties": {"attribute": _NAME, "value_from": FIELD_PATH},
        "required": ["attribute"],
        "oneOf": [{"required": ["value"]}, {"required": ["value_from"]}],
    },
    "award_badge": {"properties": {"badge": _NAME}, "required": ["badge"]},
    "award_points": {
        "properties": {
            "points": {"type": "integer", "minimum": -1_000_000_000, "maximum": 1_000_000_000, "not": {"const": 0}},
            "reason": _NAME,
        },
        "required": ["points"],
    },
}
ACTION = {
    "description": "What a trigger does. `config` is at most 16 KiB.",
    "anyOf": [_action(type_, _ACTION_CONFIGS.get(type_, {})) for type_ in get_args(ActionType)],
}
WINDOW = {
    "type": "object",
    "properties": {
        "within": {"type": "string", "pattern": DURATION_PATTERN},
        "count_at_least": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "sum_at_least": {
            "type": "object",
            "properties": {"field": FIELD_PATH, "value": {"type": "number"}},
            "required": ["field", "value"],
            "additionalProperties": False,
        },
    },
    "required": ["within"],
    "additionalProperties": False,
    "oneOf": [
        {"required": ["count_at_least"], "not": {"required": ["sum_at_least"]}},
        {"required": ["sum_at_least"], "not": {"required": ["count_at_least"]}},
    ],
}
EXTENSION_NAMES = {"anyOf": [{"pattern": "^[a-z0-9]+$"}, {"enum": ["data", "data_base64"]}]}
EXTENSION_VALUE = {
    "anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "integer", "minimum": cloudevents.INT32[0], "maximum": cloudevents.INT32[1]},
    ]
}
TOPIC = {"type": "string", "pattern": webhooks.TOPIC.pattern}
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
WEBHOOK_URL = {
    "type": "string",
    "maxLength": MAX_URL_LENGTH,
    "description": "An http(s) URL of a public host: a host name, or an IP address that is not private, loopback "
    "or otherwise local; no credentials.",
    # Host names whose last label starts with a letter: IP addresses are accepted too, but only public ones.
    "pattern": rf"^[Hh][Tt][Tt][Pp][Ss]?://({_LABEL}\.)+[A-Za-z]([A-Za-z0-9_-]{{0,61}}[A-Za-z0-9_])?\.?"
    rf"(:{_PORT})?([/?#][!-~]*)?$",
}
MAPPED_TYPE = {"type": "string", "minLength": 1, "maxLength": 128}
_ORIGIN_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ORIGIN = {
    "type": "string",
    "maxLength": 260,  # a host of at most 253 characters
    "description": "scheme://host[:port] as a browser sends it in Origin: http or https, no path, no wildcard.",
    # IPv6 addresses in brackets are accepted too.
    "pattern": rf"^[Hh][Tt][Tt][Pp][Ss]?://({_ORIGIN_LABEL}\.)*{_ORIGIN_LABEL}(:{_PORT})?$",
}
# A publishable key is an ingest key with the origins that may use it; no other key has origins.
KEY_KINDS = [
    {"properties": {"publishable": {"const": False}, "allowed_origins": {"type": "null"}}},
    {
        "required": ["publishable", "allowed_origins"],
        "properties": {
            "publishable": {"const": True},
            "role": {"const": "ingest"},
            "allowed_origins": {"type": "array", "minItems": 1, "maxItems": keys.MAX_ORIGINS, "items": ORIGIN},
        },
    },
]


def refine(components: dict[str, Any]) -> None:
    """Add to the generated components what their Structs cannot express."""
    components["JsonValue"] = JSON_VALUE
    components["EventIn"]["properties"]["data"] |= JSON_MEMBERS
    components["Condition"] = CONDITION
    trigger = components["TriggerIn"]["properties"]
    trigger["conditions"] = {"anyOf": [_ref("Condition"), {"type": "null"}]}
    trigger["action"] = ACTION
    trigger["window"] = {"anyOf": [WINDOW, {"type": "null"}]}
    trigger["cooldown"] = {"anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "null"}]}
    components["TriggerPatch"]["properties"] = {
        name: schema for name, schema in components["TriggerIn"]["properties"].items()
    }
    event = components["CloudEvent"]
    event["properties"]["data"] = _ref("JsonValue")
    event["propertyNames"] = EXTENSION_NAMES
    event["additionalProperties"] = EXTENSION_VALUE
    event["not"] = {
        "required": ["data", "data_base64"],
        "properties": {"data": {"not": {"type": "null"}}, "data_base64": {"type": "string"}},
    }
    mappings = components["TypeMappings"]["properties"]["mappings"]
    mappings["propertyNames"] = MAPPED_TYPE
    mappings["additionalProperties"] = {"type": "array", "items": MAPPED_TYPE}
    components["KeyCreate"]["anyOf"] = KEY_KINDS
    for name in ("WebhookCreate", "WebhookPatch"):
        props = components[name]["properties"]
        props["url"] = WEBHOOK_URL
        props["subscriptions"]["items"] = TOPIC
    gamification_docs.refine(components)
    components["SchemaPut"]["properties"]["schema"] = {
        "type": ["object", "boolean"],
        "description": "A JSON Schema (draft 2020-12) for the type's `data`, at most 64 KiB.",
    }


# The operations.

NATIVE = ("events",)
KEYS = ("keys",)
SCHEMAS = ("schemas",)
QUARANTINE = ("quarantine",)
TRIGGERS = ("triggers",)
WEBHOOKS = ("webhooks",)
PROCESSING = ("processing",)
META = ("meta",)
READ = AUTH_ERRORS
WRITE = (*BODY_ERRORS, *AUTH_ERRORS, 507)
INGEST = (*WRITE, 429)
RATE_LIMIT_DESCRIPTION = (
    "A token bucket counted in events: `burst` at once, refilled at `per_second`. A key's own limit comes "
    "first, then its tenant's default, then the server's (`HEADWATER_RATE_LIMIT`); `null` removes one. "
    "Over the limit, ingest answers 429 with `Retry-After` and `RateLimit-*` headers and stores nothing; a "
    "request of more events than the burst is 413. Every API process applies a change within a second."
)


EVENT_TYPE = Param("type", Annotated[str, msgspec.Meta(min_length=1, max_length=128)], where="path")
ACTION_PARAMS = (
    Param("status", Literal["dispatched", "skipped", "failed"]),
    Param("type", description="Only actions of this type."),
    Param("subject", description="Only actions for this subject."),
    Param("event", description="Only actions fired by this event id."),
    LIMIT,
    POSITION_CURSOR,
)
_SEGMENT_REFS = {t: _ref(t.__name__) for t in SEGMENT_TYPES.values()}


def _ops() -> dict[Key, Doc]:
    docs: dict[Key, Doc] = {
        ("GET", "/healthz"): Doc("The process answers", META, {200: Health}, security=NO_AUTH),
        ("GET", "/readyz"): Doc(
            "The store accepts writes",
            META,
            {200: Ready, 503: Reply(NotReady, "The store does not accept writes now.")},
            security=NO_AUTH,
        ),
        ("GET", "/openapi.json"): Doc(
            "This document (OpenAPI 3.1)", META, {200: Reply(schema={"type": "object"})}, security=NO_AUTH
        ),
        ("GET", "/metrics"): Doc(
            "Prometheus metrics (text format): ingest, queue, group commits, requests, lag, triggers, webhooks",
            META,
            {200: Reply(schema={"type": "string"}, media_type="text/plain")},
            security=NO_AUTH,
        ),
        ("GET", "/docs"): Doc(
            "A readable page of this document",
            META,
            {200: Reply(schema={"type": "string"}, media_type="text/html")},
            security=NO_AUTH,
        ),
        ("GET", "/"): Doc(
            "Redirects to the web console",
            META,
            {
                307: Reply(
                    description="To `/console/`, the console's page.",
                    headers={"Location": {"description": "`/console/`.", "schema": {"type": "string"}}},
                )
            },
            security=NO_AUTH,
        ),
        ("GET", "/console"): Doc(
            "Redirects to the web console's page",
            META,
            {307: Reply(description="To `/console/`.", headers={"Location": {"schema": {"type": "string"}}})},
            security=NO_AUTH,
        ),
        ("GET", "/console/{path}"): Doc(
            "The web console: its page (`/console/`) and its files",
            META,
            {200: Reply(schema={"type": "string"}, media_type="text/html")},
            description="Static files of the package, under a strict Content-Security-Policy. The page asks for"
            " an API key and calls this API with it.",
            errors=(404,),
            security=NO_AUTH,
        ),
        ("GET", "/v1/me"): Doc(
            "The key this request was made with",
            KEYS,
            {200: overview.Me},
            description="Its tenant, mode and role: what the console's pages follow.",
            errors=READ,
        ),
        ("GET", "/v1/processing"): Doc(
            "Where processing stands",
            PROCESSING,
            {200: Status},
            description="The log's head and, per consumer and partition, its checkpoint, its lag and the worker"
            " holding it: the same as `headwater status --json`. Of the whole server (tenants share the log), so"
            " for admin keys only.",
            errors=READ,
        ),
        ("GET", "/v1/stats"): Doc(
            "Events received per minute and rejections by reason",
            NATIVE,
            {200: overview.Stats},
            description="Over the last `minutes` (every minute of it, zero where nothing came), counted from the"
            " stored events and quarantine of the key's tenant and mode.",
            params=(
                Param(
                    "minutes",
                    Annotated[int, msgspec.Meta(ge=1, le=overview.MAX_MINUTES)],
                    description="1-1440 (default 60).",
                ),
            ),
            errors=(400, *READ),
        ),
        ("GET", "/v1/events/live"): Doc(
            "Follow events as they arrive (server-sent events)",
            NATIVE,
            {
                200: Reply(
                    schema={"type": "string"},
                    media_type="text/event-stream",
                    description="`: connected` first; then per event, in log order, `id: <seq>`, `event: event` and"
                    " `data: <the event's JSON>`; `: keepalive` when quiet.",
                )
            },
            description="Every event of the key's tenant and mode, not a sample. From `after` (an offset, a"
            " message's `id`), or `Last-Event-ID` when reconnecting, or else from now.",
            params=(
                Param("type", list[str], description="Event types (repeatable)."),
                Param("subject", description="Only this subject."),
                Param("source", description="Only this source."),
                Param(
                    "after", Annotated[int, msgspec.Meta(ge=0, le=10**18 - 1)], description="Start after this offset."
                ),
                Param(
                    "Last-Event-ID",
                    Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,18}$")],
                    where="header",
                    description="As `after`; a reconnecting client sends it.",
                ),
            ),
            errors=(400, *READ),
        ),
        ("GET", "/v1/events/{event_id}/effects"): Doc(
            "One event and what it caused",
            NATIVE,
            {200: effects.EventEffects},
            description="Its fact, the triggers it fired with their actions, and the webhook deliveries of the event"
            " and of those actions. `processed` says whether every consumer has passed it yet.",
            errors=(404, *READ),
        ),
        ("POST", "/v1/events"): Doc(
            "Ingest one event or a batch",
            NATIVE,
            {
                200: Reply(
                    (IngestResult, events.ProcessedIngestResult),
                    "Per-event results (with `?wait=processed`, also the triggers each event fired).",
                )
            },
            description=(
                'One event object, or `{"events": [...]}` with up to 1,000 events (more is 413). Each event '
                "gets its own result; an invalid one is rejected (and quarantined) without sinking the rest, so "
                "any readable body is answered 200. Re-sending an `idempotency_key` is a duplicate that reports "
                "the original id. `?wait=processed` waits until the trigger consumer has applied the events "
                "(503 with Retry-After if it does not in time; the events are stored either way). A gzip body "
                "(`Content-Encoding: gzip`) is fine."
            ),
            params=(
                Param(
                    "wait",
                    Literal["processed"],
                    description="`processed`: answer once triggers ran, listing what each event fired.",
                ),
            ),
            body=(Body(schema=NATIVE_BODY),),
            body_description="An event (`EventIn`) or a batch (`EventBatch`); see the description.",
            errors=INGEST,
        ),
        ("GET", "/v1/events"): Doc(
            "Query events, newest first",
            NATIVE,
            {200: events.EventPage},
            params=(
                Param("type", list[str], description="Event types (repeatable)."),
                Param("subject", description="Only this subject."),
                Param("source", description="Only this source."),
                *_time_range("Event time"),
                LIMIT,
                EVENT_CURSOR,
            ),
            errors=(400, *READ),
        ),
        ("GET", "/v1/events/{event_id}"): Doc(
            "One event", NATIVE, {200: Event}, description="Another tenant's or mode's id is 404.", errors=(404, *READ)
        ),
        ("POST", "/v1/keys"): Doc(
            "Create a key (shown once)", KEYS, {201: CreatedKey}, body=(Body(keys.KeyCreate),), errors=WRITE
        ),
        ("GET", "/v1/keys"): Doc("The tenant's keys", KEYS, {200: keys.KeyList}, errors=READ),
        ("GET", "/v1/keys/{key_id}/rate-limit"): Doc(
            "A key's rate limit", KEYS, {200: limits.KeyRateLimit}, errors=(404, *READ)
        ),
        ("PUT", "/v1/keys/{key_id}/rate-limit"): Doc(
            "Set or remove a key's rate limit",
            KEYS,
            {200: limits.KeyRateLimit},
            description=RATE_LIMIT_DESCRIPTION,
            body=(Body(limits.RateLimitPut),),
            errors=(*WRITE, 404),
        ),
        ("GET", "/v1/settings/rate-limit"): Doc(
            "The tenant's default rate limit", KEYS, {200: limits.TenantRateLimit}, errors=READ
        ),
        ("PUT", "/v1/settings/rate-limit"): Doc(
            "Set or remove the tenant's default rate limit",
            KEYS,
            {200: limits.TenantRateLimit},
            description=RATE_LIMIT_DESCRIPTION,
            body=(Body(limits.RateLimitPut),),
            errors=WRITE,
        ),
        ("DELETE", "/v1/keys/{key_id}"): Doc(
            "Revoke a key",
            KEYS,
            {200: KeyRecord},
            description="Every server stops accepting it within a second.",
            errors=(404, *READ),
        ),
        ("GET", "/v1/schemas"): Doc("The latest schema of every type", SCHEMAS, {200: schemas.SchemaList}, errors=READ),
        ("PUT", "/v1/schemas/{type}"): Doc(
            "Register the next version of a type's schema",
            SCHEMAS,
            {201: SchemaVersion},
            params=(EVENT_TYPE,),
            body=(Body(schemas.SchemaPut),),
            errors=(*WRITE, 404),
        ),
        ("GET", "/v1/schemas/{type}"): Doc(
            "A type's latest schema", SCHEMAS, {200: SchemaVersion}, params=(EVENT_TYPE,), errors=(400, 404, *READ)
        ),
        ("GET", "/v1/schemas/{type}/versions"): Doc(
            "Every version of a type's schema",
            SCHEMAS,
            {200: schemas.SchemaList},
            params=(EVENT_TYPE,),
            errors=(400, 404, *READ),
        ),
        ("GET", "/v1/quarantine"): Doc(
            "Rejected items with their reasons",
            QUARANTINE,
            {200: quarantine.QuarantinePage},
            params=(
                Param("status", Literal["quarantined", "replayed", "all"], description="Default `quarantined`."),
                Param("type", description="Only items of this event type."),
                *_time_range("Received"),
                LIMIT,
                Param("cursor", description="`next_cursor` of the previous page."),
            ),
            errors=(400, *READ),
        ),
        ("POST", "/v1/quarantine/replay"): Doc(
            "Re-submit quarantined items",
            QUARANTINE,
            {200: quarantine.ReplayResponse},
            description="By ids or by filter; dedup still holds.",
            body=(Body((ReplayByIds, ReplayByFilter)),),
            errors=WRITE,
        ),
        ("GET", "/v1/event-types"): Doc("The event catalog", ("catalog",), {200: catalog.CatalogList}, errors=READ),
        ("POST", "/v1/triggers"): Doc(
            "Create a trigger", TRIGGERS, {201: triggers.TriggerOut}, body=(Body(TriggerIn),), errors=WRITE
        ),
        ("GET", "/v1/triggers"): Doc("The triggers", TRIGGERS, {200: triggers.TriggerList}, errors=READ),
        ("POST", "/v1/triggers/test"): Doc(
            "Dry-run a sample event against a trigger",
            TRIGGERS,
            {200: triggers.DryRunResult},
            body=(Body((DryRunInline, DryRunStored)),),
            errors=(*WRITE, 404),
        ),
        ("GET", "/v1/triggers/{trigger_id}"): Doc(
            "One trigger", TRIGGERS, {200: triggers.TriggerOut}, errors=(404, *READ)
        ),
        ("PATCH", "/v1/triggers/{trigger_id}"): Doc(
            "Change a trigger",
            TRIGGERS,
            {200: triggers.TriggerOut},
            body=(Body(TriggerPatch),),
            errors=(*WRITE, 404),
        ),
        ("DELETE", "/v1/triggers/{trigger_id}"): Doc(
            "Delete a trigger", TRIGGERS, {200: triggers.TriggerOut}, errors=(404, *READ)
        ),
        ("GET", "/v1/triggers/{trigger_id}/firings"): Doc(
            "What a trigger fired", TRIGGERS, {200: triggers.ActionPage}, params=ACTION_PARAMS, errors=(400, 404, *READ)
        ),
        ("GET", "/v1/actions"): Doc(
            "Actions fired by any trigger",
            TRIGGERS,
            {200: triggers.ActionPage},
            params=(*ACTION_PARAMS, Param("trigger", description="Only this trigger's actions.")),
            errors=(400, *READ),
        ),
        ("GET", "/v1/type-mappings"): Doc(
            "The internal type mapping", TRIGGERS, {200: triggers.TypeMappings}, errors=READ
        ),
        ("PUT", "/v1/type-mappings"): Doc(
            "Replace the internal type mapping",
            TRIGGERS,
            {200: triggers.TypeMappings},
            description="Each event type also fires the triggers of the types it maps to (at most 1,000 in all).",
            body=(Body(triggers.TypeMappings),),
            errors=WRITE,
        ),
        ("GET", "/v1/journeys/{journey_id}/enrollments"): Doc(
            "A journey's enrollments", TRIGGERS, {200: triggers.EnrollmentList}, errors=READ
        ),
        ("GET", "/v1/subjects/{subject_id}"): Doc(
            "A subject's profile", TRIGGERS, {200: SubjectProfile}, errors=(404, *READ)
        ),
        ("POST", "/v1/webhooks"): Doc(
            "Create a webhook endpoint (its secret is shown)",
            WEBHOOKS,
            {201: webhooks.WebhookWithSecret},
            body=(Body(webhooks.WebhookCreate),),
            errors=WRITE,
        ),
        ("GET", "/v1/webhooks"): Doc("The webhook endpoints", WEBHOOKS, {200: webhooks.WebhookList}, errors=READ),
        ("GET", "/v1/webhooks/{endpoint_id}"): Doc(
            "One webhook endpoint", WEBHOOKS, {200: webhooks.WebhookOut}, errors=(404, *READ)
        ),
        ("PATCH", "/v1/webhooks/{endpoint_id}"): Doc(
            "Change a webhook endpoint",
            WEBHOOKS,
            {200: webhooks.WebhookOut},
            body=(Body(webhooks.WebhookPatch),),
            errors=(*WRITE, 404),
        ),
        ("DELETE", "/v1/webhooks/{endpoint_id}"): Doc(
            "Delete a webhook endpoint", WEBHOOKS, {200: webhooks.WebhookOut}, errors=(404, *READ)
        ),
        ("POST", "/v1/webhooks/{endpoint_id}/rotate"): Doc(
            "Rotate the signing secret",
            WEBHOOKS,
            {200: webhooks.WebhookWithSecret},
            description="The previous secret keeps signing for a grace period.",
            errors=(404, *READ),
        ),
        ("POST", "/v1/webhooks/{endpoint_id}/test"): Doc(
            "Send a test message", WEBHOOKS, {202: webhooks.DeliveryOut}, errors=(404, 409, *READ)
        ),
        ("GET", "/v1/webhooks/{endpoint_id}/attempts"): Doc(
            "Delivery attempts to an endpoint",
            WEBHOOKS,
            {200: webhooks.AttemptPage},
            params=(LIMIT, POSITION_CURSOR),
            errors=(400, 404, *READ),
        ),
        ("GET", "/v1/deliveries"): Doc(
            "The outbox",
            WEBHOOKS,
            {200: webhooks.DeliveryPage},
            params=(
                Param("status", Literal["pending", "delivered", "failed"]),
                Param("endpoint_id", description="Only this endpoint's deliveries."),
                LIMIT,
                POSITION_CURSOR,
            ),
            errors=(400, *READ),
        ),
        ("GET", "/v1/deliveries/{delivery_id}"): Doc(
            "One delivery", WEBHOOKS, {200: webhooks.DeliveryOut}, errors=(404, *READ)
        ),
        ("POST", "/v1/deliveries/{delivery_id}/retry"): Doc(
            "Re-send a dead-lettered delivery", WEBHOOKS, {202: webhooks.DeliveryOut}, errors=(404, 409, *READ)
        ),
        ("GET", "/v1/dead-letters"): Doc(
            "Events processing passed over",
            PROCESSING,
            {200: dead_letters.DeadLetterPage},
            description="Events a consumer could not apply after a few attempts, newest first: skipped, so"
            " that the events behind them went on.",
            params=(LIMIT, POSITION_CURSOR),
            errors=(400, *READ),
        ),
        ("GET", "/v1/dead-letters/{dead_letter_id}"): Doc(
            "One dead letter", PROCESSING, {200: DeadLetter}, errors=(404, *READ)
        ),
        ("POST", "/v1/dead-letters/{dead_letter_id}/retry"): Doc(
            "Apply a dead letter's event again",
            PROCESSING,
            {202: DeadLetter},
            description="The worker holding its partition applies it again: `retrying`, then `resolved` (or `dead`"
            " again, with the new error).",
            errors=(404, 409, *READ),
        ),
        # Seed 000.
        ("POST", data_events.PATH): Doc(
            "Ingest data events (seed 000)",
            ("data events (000)",),
            {200: data_events.PostResponse},
            description="1-1,000 events (more is 413), all or nothing; `event_id` is the idempotency key.",
            body=(Body(DataEventsBody),),
            errors=WRITE,
        ),
        ("GET", data_events.PATH): Doc(
            "Query data events (seed 000)",
            ("data events (000)",),
            {200: data_events.GetResponse},
            params=(
                Param("event_type", list[str], description="Event types (repeatable)."),
                Param("source", description="Only this source."),
                *_time_range("Event time"),
                LIMIT,
                EVENT_CURSOR,
            ),
            errors=(400, *READ),
        ),
        # Seed 001.
        ("POST", analytics.PATH): Doc(
            "Ingest an analytics event (seed 001)",
            ("analytics (001)",),
            {200: analytics.Success},
            description="Invalid events get 400 `Invalid event` with one detail per problem (`validation.*`).",
            body=(Body(AnalyticsEvent),),
            errors=WRITE,
        ),
        # Seed 002.
        ("POST", customer_events.PATH): Doc(
            "Ingest a customer event and run its triggers (seed 002)",
            ("customer events (002)",),
            {200: customer_events.IngestResponse},
            description="Only admin and editor keys may call it.",
            body=(Body(CustomerEvent),),
            errors=WRITE,
        ),
    }
    for prefix in gamification.PREFIXES:
        tags = ("gamification (003)",)
        docs[("POST", f"{prefix}/ingest/events")] = Doc(
            "Ingest a gamification event, asynchronously (seed 003)",
            tags,
            {202: gamification.Accepted},
            body=(Body(GamificationEvent),),
            errors=WRITE,
        )
        docs[("POST", f"{prefix}/ingest/events/batch")] = Doc(
            "Ingest up to 100 gamification events (seed 003)",
            tags,
            {202: gamification.BatchAccepted},
            description="Each event is validated on its own; more than 100 is 413.",
            body=(Body(schema=GAMIFICATION_BATCH),),
            errors=WRITE,
        )
        docs[("POST", f"{prefix}/ingest/events/sync")] = Doc(
            "Ingest a gamification event and make its fact (seed 003)",
            tags,
            {200: gamification.Processed},
            body=(Body(GamificationEvent),),
            errors=WRITE,
        )
    segment_tags = ("segment",)
    for kind, type_ in SEGMENT_TYPES.items():
        docs[("POST", f"/v1/{kind}")] = Doc(
            f"Segment `{kind}`",
            segment_tags,
            {200: segment.SegmentResponse},
            description=(
                "Segment's Tracking API. Any readable JSON object is answered 200; a message Segment would drop "
                "is rejected (and quarantined), as its result says. At most 32 KB (over is 400)."
            ),
            body=(Body(schema={"anyOf": [_SEGMENT_REFS[type_], {"type": "object"}]}),),
            errors=WRITE,
            security=WRITE_KEY,
        )
    docs[("POST", "/v1/batch")] = Doc(
        "Segment `batch`",
        segment_tags,
        {200: segment.SegmentResponse},
        description="Up to 2,500 messages and 500 KB (over is 400); each message is accepted or rejected on its own.",
        body=(Body(SegmentBatch),),
        errors=WRITE,
        security=WRITE_KEY,
    )
    docs[("POST", "/v1/cloudevents")] = Doc(
        "CloudEvents over HTTP",
        ("cloudevents",),
        {
            202: Reply(IngestResult, "At least one event was accepted (or was a duplicate), or the batch was empty."),
            400: Reply(
                (IngestResult, ErrorBody), "Every event was rejected (per-event results), or the body is unreadable."
            ),
        },
        description=(
            "Structured mode (`application/cloudevents+json`, one event) and batched mode "
            "(`application/cloudevents-batch+json`, an array). Binary mode is accepted too: the attributes as "
            "`ce-specversion`, `ce-id`, `ce-source`, `ce-type` (and other `ce-*`) headers, the data as the body "
            "with its own Content-Type. `source` + `id` is the idempotency key. Any other "
            "`application/cloudevents...` type, or a request that is none of these, is 415."
        ),
        body=(
            Body(CloudEvent, media_type=cloudevents.STRUCTURED),
            Body(schema=CLOUDEVENT_BATCH, media_type=cloudevents.BATCHED),
        ),
        errors=(413, 415, *AUTH_ERRORS, 507),
    )
    docs[("OPTIONS", "/v1/cloudevents")] = Doc(
        "CloudEvents webhook validation handshake",
        ("cloudevents",),
        {
            200: Reply(
                description="The methods allowed; the origin asked for is allowed, at any rate.",
                headers={
                    "Allow": {"schema": {"type": "string"}, "required": True},
                    "WebHook-Allowed-Origin": {"schema": {"type": "string"}},
                    "WebHook-Allowed-Rate": {"schema": {"type": "string"}},
                },
            )
        },
        params=(Param("WebHook-Request-Origin", where="header", description="The sender's origin."),),
        security=NO_AUTH,
    )
    return docs


DOCS: dict[Key, Doc] = {**_ops(), **gamification_docs.docs(), **erasures.docs(), **audit.docs()}
# Types that raw schemas above `$ref`, so they must be components too.
EXTRA_TYPES: tuple[Any, ...] = (
    events.EventIn,
    EventBatch,
    GamificationBatch,
    TriggerPatch,
    *dict.fromkeys(SEGMENT_TYPES.values()),
)

TITLE = "Headwater"
DESCRIPTION = (
    "Multi-tenant event ingestion: the native API, four documented foreign event APIs, Segment's Tracking API "
    'and CloudEvents. Errors are `{"error", "details": [{"field", "code", "message"}]}`; bad input is a 4xx, '
    "never a 500. Keys: `Authorization: Bearer <key>` or `X-API-Key: <key>` (Segment: the Basic-auth username)."
)


def _version() -> str:
    try:
        return version("headwater")
    except PackageNotFoundError:
        return "0.0.0"


def document(routes: Iterable[BaseRoute], hot: Iterable[Key]) -> dict[str, Any]:
    """The OpenAPI document of an app's routes. A route without a `Doc` is left out, with a
    warning (and `tests/test_openapi.py` fails on it)."""
    operations, missing = document_operations(app_operations(routes, hot), DOCS)
    if missing:
        logger.warning("routes without OpenAPI documentation: %s", ", ".join(missing))
    return build_document(
        operations, title=TITLE, version=_version(), description=DESCRIPTION, extra_types=EXTRA_TYPES, refine=refine
    )
