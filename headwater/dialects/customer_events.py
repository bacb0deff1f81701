"""Seed 002: real-time customer events with triggers.

    POST /api/v1/events/ingest   (admin or editor key; X-Tenant-Id honoured)
      {"type", "customerId", "data"?, "channel"?, "timestamp"?}
      → 200 {"ingested": true, "eventType", "customerId", "streamId",
             "triggersMatched": [], "actionsDispatched": [], "actionErrors"?: [...]}

Mapping: type = type (one of purchase, cart_abandon, page_view, app_open, support_call),
subject = customerId, channel = channel, time = timestamp (default: the receive time),
data = data (default {}).

Choices where the document is silent:
- `streamId`: with a bus (`--bus redis://...`), the event's entry id in its partition's Redis
  stream, published once the event is durable in the log; null when Redis was down or slow
  (the document's "stream publish failed, event still processed": the event is stored and
  processed, and the bus's catch-up publishes it later). Without a bus the event log is the
  stream and `streamId` is the event's id, never null. Either way an event is acknowledged
  only once it is durable in the log, and a failed append is a 503 with Retry-After.
- Statuses: 400 for an invalid body (every problem listed; the event is kept in the
  quarantine, dialect `customer_events`, unless the body is not a JSON object at all),
  401 for a missing, unknown or revoked key, 403 for a role other than admin or editor or an
  X-Tenant-Id naming another tenant than the key's. The header itself is optional: the key
  names the tenant. Unknown fields are refused rather than silently dropped.
- There is no idempotency field in this API, so a retried request stores a second event.
- Triggers run as for every event (the consumer, in log order); this route waits until the
  consumer has applied the event, then lists what it fired: `triggersMatched` every firing,
  highest priority first; `actionsDispatched` those dispatched; `actionErrors` those that
  failed (absent when none did). A firing skipped by its own rule (a journey the customer is
  already in) is matched but neither dispatched nor an error. The internal type mapping is the
  tenant's (`/v1/type-mappings`; by default the document's).
- If processing does not catch up within HEADWATER_SYNC_TIMEOUT seconds, the event is still
  stored and processed later; the response then says so in `actionErrors`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import json_response
from headwater.auth import Principal
from headwater.dialects.common import MAX_TEXT, NATIVE_CODES, Checked, Spec, check_fields, read_object
from headwater.dialects.common import read_item as check_item
from headwater.errors import ApiError
from headwater.events import EMPTY_OBJECT, EventDraft, Rejection
from headwater.processing import waiting
from headwater.services import Services

NAME = "customer_events"
PATH = "/api/v1/events/ingest"
ERROR = "invalid event"
ROLES = ("admin", "editor")

TYPES = ("purchase", "cart_abandon", "page_view", "app_open", "support_call")

SPECS = (
    Spec("type", required=True, choices=TYPES),
    Spec("customerId", required=True, min_length=1, max_length=MAX_TEXT),
    Spec("data", "object"),
    Spec("channel", max_length=MAX_TEXT),
    Spec("timestamp", "time"),
)


class TriggerMatch(msgspec.Struct, rename="camel"):
    trigger_id: str
    action_type: str


class DispatchedAction(msgspec.Struct, rename="camel"):
    trigger_id: str
    action_type: str
    config: dict[str, Any]


class ActionError(msgspec.Struct, rename="camel"):
    trigger_id: str
    action_type: str
    error: str


class TriggerOutcome(msgspec.Struct):
    matched: list[TriggerMatch]
    dispatched: list[DispatchedAction]
    errors: list[ActionError]


class IngestResponse(msgspec.Struct, rename="camel", omit_defaults=True):
    ingested: bool
    event_type: str
    customer_id: str
    stream_id: str | None
    triggers_matched: list[TriggerMatch]
    actions_dispatched: list[DispatchedAction]
    action_errors: list[ActionError] | None = None


async def evaluate_triggers(
    services: Services, principal: Principal, event_id: str, partition: int, seq: int
) -> TriggerOutcome:
    """What the event fired, once the trigger consumer has applied it."""
    store = services.store
    if not await waiting.processed(store, [(partition, seq)], services.settings.sync_timeout, bus=services.bus):
        late = ActionError("", "", "processing did not finish in time; actions will still be dispatched")
        return TriggerOutcome(matched=[], dispatched=[], errors=[late])
    actions = (await waiting.actions_fired(store, principal.tenant, principal.mode, [event_id]))[event_id]
    return TriggerOutcome(
        matched=[TriggerMatch(a.trigger_id, a.type) for a in actions],
        dispatched=[
            DispatchedAction(a.trigger_id, a.type, msgspec.json.decode(a.config))
            for a in actions
            if a.status == "dispatched"
        ],
        errors=[ActionError(a.trigger_id, a.type, a.error or "failed") for a in actions if a.status == "failed"],
    )


def _draft(checked: Checked, raw: bytes) -> EventDraft:
    return EventDraft(
        type=checked.strings["type"],
        subject=checked.strings["customerId"],
        channel=checked.strings.get("channel"),
        time=checked.times.get("timestamp"),
        data=checked.present.get("data", EMPTY_OBJECT),
        raw=raw,
    )


def read_item(raw: bytes) -> EventDraft | Rejection:
    """One event, as a request body holds it."""
    checked = check_item(raw, SPECS, NATIVE_CODES)
    return checked if isinstance(checked, Rejection) else _draft(checked, raw)


def routes(services: Services) -> list[BaseRoute]:
    settings = services.settings

    async def ingest(request: Request) -> Response:
        principal = await services.auth.authenticate(request.scope["headers"], "ingest")
        if principal.role not in ROLES:
            raise ApiError(403, f"the {principal.role} role may not use this API: it needs admin or editor")
        body = await request.body()
        checked = check_fields(read_object(body, settings.max_json_depth, NATIVE_CODES), SPECS, NATIVE_CODES)
        item = Rejection(checked.errors, body) if checked.errors else _draft(checked, body)
        ingested = await services.pipeline.ingest(principal, [item], dialect=NAME)
        result, seq, partition = ingested.result.results[0], ingested.seqs[0], ingested.partitions[0]
        if result.status == "rejected" or result.id is None or seq is None or partition is None:
            raise ApiError(400, ERROR, result.errors)
        assert isinstance(item, EventDraft)
        outcome = await evaluate_triggers(services, principal, result.id, partition, seq)
        return json_response(
            IngestResponse(
                ingested=True,
                event_type=item.type,
                customer_id=checked.strings["customerId"],
                stream_id=result.id if ingested.stream_ids is None else ingested.stream_ids[0],
                triggers_matched=outcome.matched,
                actions_dispatched=outcome.dispatched,
                action_errors=outcome.errors or None,
            )
        )

    return [Route(PATH, ingest, methods=["POST"])]
