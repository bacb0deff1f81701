"""Seed 001: the analytics event API, one strictly typed event per request.

    POST /ingest   (X-API-Key)   → 200 {"status": "success", "eventId": <the client's event_id>}
    invalid        → 400 {"error": "Invalid event", "details": [{"field", "message", "code"}, ...]}

Mapping: idempotency_key = event_id, type = event_type (the category, such as `click`; the
specific `event_name` stays in data), subject = user_id, channel = platform, time = event_time,
data = every other field the client sent, verbatim and in its order.

Choices where the document is silent:
- `device_type`, `platform`, `app_version` and `network_type` are optional (they sit under
  "Optional fields"; only their missing `?` says otherwise), but when present the three enums
  must hold one of their values. A null counts as absent for an optional field and as missing
  for a required one; a required string must not be empty.
- Every problem is reported, one entry each, with codes `validation.required`, `validation.type`,
  `validation.format` (event_time; a canonical field over its length limit: event_type 128,
  event_id and user_id 256 characters; a body that is not JSON) and `validation.enum`; a field
  the document does not list is `validation.unknown_field` (custom data goes in `extras`).
  A tenant's strict schema for the type (it sees `data`: the fields not mapped elsewhere)
  reports `schema.*` codes on those fields' own names, and so does a number no 64-bit float
  or integer holds (`number_out_of_range`, e.g. on `extras.amount`).
- An invalid event is kept in the quarantine (dialect `analytics`); a body that is not a
  JSON object at all is refused without being kept.
- Re-sending an event_id is a no-op that answers success with the same eventId.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response
from headwater.dialects.common import (
    MAX_TEXT,
    MAX_TYPE,
    Checked,
    Codes,
    Spec,
    check_fields,
    data_as,
    encode_object,
    read_object,
)
from headwater.dialects.common import read_item as check_item
from headwater.errors import ApiError
from headwater.events import EventDraft, Rejection
from headwater.services import Services

NAME = "analytics"
PATH = "/ingest"
ERROR = "Invalid event"

CODES = Codes(
    title=ERROR,
    required="validation.required",
    invalid_type="validation.type",
    too_long="validation.format",
    empty="validation.required",
    invalid_format="validation.format",
    invalid_value="validation.enum",
    unknown_field="validation.unknown_field",
    invalid_json="validation.format",
    too_deep="validation.format",
    invalid_utf8="validation.format",
)

OBJECTS = ("content", "behavior", "performance", "location", "commerce", "interaction")
SPECS = (
    Spec("event_id", required=True, min_length=1, max_length=MAX_TEXT),
    Spec("event_type", required=True, min_length=1, max_length=MAX_TYPE),
    Spec("event_name", required=True, min_length=1),
    Spec("event_time", "time", required=True),
    Spec("user_id", required=True, min_length=1, max_length=MAX_TEXT),
    Spec("session_id", required=True, min_length=1),
    Spec("page_name", required=True, min_length=1),
    Spec("element_id"),
    Spec("referrer"),
    Spec("device_type", choices=("mobile", "desktop", "tablet")),
    Spec("platform", choices=("ios", "android", "web")),
    Spec("app_version"),
    Spec("network_type", choices=("wifi", "cellular", "unknown")),
    *(Spec(name, "object") for name in OBJECTS),
    Spec("experiments", "strings"),
    Spec("extras", "object"),
)


class Success(msgspec.Struct):
    """The answer to an accepted (or re-sent) event: the client's own event_id."""

    status: Literal["success"]
    eventId: str


MAPPED = frozenset({"event_id", "event_type", "event_time", "user_id", "platform"})


def _draft(checked: Checked, raw: bytes) -> EventDraft:
    return EventDraft(
        type=checked.strings["event_type"],
        subject=checked.strings["user_id"],
        channel=checked.strings.get("platform"),
        time=checked.times["event_time"],
        idempotency_key=checked.strings["event_id"],
        data=encode_object({k: v for k, v in checked.present.items() if k not in MAPPED}),
        raw=raw,
    )


def read_item(raw: bytes) -> EventDraft | Rejection:
    """One event, as a request body holds it."""
    checked = check_item(raw, SPECS, CODES)
    return checked if isinstance(checked, Rejection) else _draft(checked, raw)


def routes(services: Services) -> list[BaseRoute]:
    settings = services.settings

    async def ingest(request: Request) -> Response:
        principal = await authorize(services, request, "ingest")
        body = await request.body()
        checked = check_fields(read_object(body, settings.max_json_depth, CODES), SPECS, CODES)
        item = Rejection(checked.errors, body) if checked.errors else _draft(checked, body)
        result = (await services.pipeline.ingest(principal, [item], dialect=NAME)).result.results[0]
        if result.status == "rejected":
            raise ApiError(400, ERROR, data_as(item, result.errors, ""))
        assert isinstance(item, EventDraft) and item.idempotency_key is not None
        return json_response(Success("success", item.idempotency_key))

    return [Route(PATH, ingest, methods=["POST"])]
