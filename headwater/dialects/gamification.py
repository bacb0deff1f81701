"""Seed 003: the gamification events API. Every route is served under `/api/v1` and without it.

    POST /ingest/events        one event  → 202 {"accepted": true, "message_id": "<ms>-<seq>"}
    POST /ingest/events/batch  {"events": [...]} (1-100)
                               → 202 {"accepted": n, "rejected": n, "message_ids": [...], "errors"?: [...]}
    POST /ingest/events/sync   one event  → 200 {"event_id", "fact_id", "fact_type", "processed_at"}

An event: {"event_name", "participant_id", "properties"?, "timestamp"?, "idempotency_key"?}.
Mapping: type = event_name, subject = participant_id, data = properties (default {}),
idempotency_key = idempotency_key, time = timestamp (default: the receive time).

Choices where the document is silent:
- Keys: the document's `bq_live_`/`bq_test_` keys are Headwater's `hw_live_`/`hw_test_` keys,
  sent in X-API-Key (Bearer works too); the key's mode keeps live and test data apart.
- Async means acknowledged once durable in the log, which the consumers then follow. Without
  a bus the log is the stream: `message_id` is `<ms>-<seq>`, the millisecond timestamp in the
  event's UUIDv7 id and its log offset. With a bus (`--bus redis://...`) it is the event's
  entry id in its partition's Redis stream; when Redis did not take the event in time (it is
  stored all the same, and published later) it is `<ms>-<seq>` as without a bus. A re-sent
  idempotency_key is a no-op that answers with the original event's `<ms>-<seq>` (with a bus
  too: nothing maps an event to its entry, which may be trimmed already).
- Batch: each event is validated on its own and a bad one never sinks the rest. `accepted`
  counts the events now in the log (re-sent ones included), `rejected` the others;
  `message_ids` holds the accepted events' ids in request order (one per accepted event);
  `errors` is present only when something was rejected, one entry per problem:
  {"index": <position in events>, "field": <path inside that event>, "code", "message"}.
  The status is 202 whenever the body is readable, so check `rejected`. More than 100
  events is 413, an empty `events` 400.
- An invalid single or sync event is 400 {"error", "details": [{"field", "code", "message"}]}
  listing every problem. Every rejected event is kept in the quarantine (dialect
  `gamification`). Unknown fields are refused rather than silently dropped; event names
  are not restricted (soft validation; the catalog discovers them). A tenant's strict schema
  for an event name checks `properties` and reports its problems as `properties.<path>`, as
  is a number no 64-bit float or integer holds (code `number_out_of_range`).
- Sync: waits until the facts consumer (and the triggers) have processed the event, then
  answers with its fact: `custom.<event_name>`, `fact_id` = "fact_" + the event id's hex, one
  per event, and `processed_at` its receive time. `progress` lists the challenge progress it
  changed (`challenge_id`, `period`, `before`, `after`, `target`, `completed`), `awards` what it
  awarded (`challenge.completed`, `badge.awarded`, `points.awarded`). A re-sent
  idempotency_key answers with the original event's fact and effects.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response
from headwater.api.gamification import Processed as Processed  # the /sync response (documented from here)
from headwater.api.gamification import processed
from headwater.dialects.common import (
    MAX_TEXT,
    MAX_TYPE,
    NATIVE_CODES,
    Checked,
    Spec,
    check_fields,
    data_as,
    read_batch,
    read_object,
)
from headwater.dialects.common import read_item as check_item
from headwater.errors import ApiError
from headwater.events import EMPTY_OBJECT, EventDraft, EventResult, Rejection
from headwater.pipeline import Ingested
from headwater.services import Services

NAME = "gamification"
PREFIXES = ("/api/v1", "")
MAX_EVENTS = 100
ERROR = "invalid event"

SPECS = (
    Spec("event_name", required=True, min_length=1, max_length=MAX_TYPE),
    Spec("participant_id", required=True, min_length=1, max_length=MAX_TEXT),
    Spec("properties", "object"),
    Spec("timestamp", "time"),
    Spec("idempotency_key", min_length=1, max_length=MAX_TEXT),
)


class Accepted(msgspec.Struct):
    accepted: bool
    message_id: str


class BatchError(msgspec.Struct):
    index: int
    field: str
    code: str
    message: str


class BatchAccepted(msgspec.Struct, omit_defaults=True):
    accepted: int
    rejected: int
    message_ids: list[str]
    errors: list[BatchError] | None = None


def _draft(checked: Checked, raw: bytes) -> EventDraft:
    return EventDraft(
        type=checked.strings["event_name"],
        subject=checked.strings["participant_id"],
        time=checked.times.get("timestamp"),
        idempotency_key=checked.strings.get("idempotency_key"),
        data=checked.present.get("properties", EMPTY_OBJECT),
        raw=raw,
    )


def read_item(raw: bytes) -> EventDraft | Rejection:
    """One event, as a single request's body or an element of a batch holds it."""
    checked = check_item(raw, SPECS, NATIVE_CODES)
    return checked if isinstance(checked, Rejection) else _draft(checked, raw)


def message_id(event_id: str, seq: int | None) -> str:
    """A stream-style id: the millisecond time in the UUIDv7 (the first 48 bits after `evt_`),
    then the log offset."""
    return f"{int(event_id[4:16], 16)}-{seq}"


def _message_ids(ingested: Ingested) -> list[str]:
    """The message id of each item the log holds (accepted now, or a duplicate), in order."""
    entries = ingested.stream_ids or [None] * len(ingested.seqs)
    return [
        entry or message_id(r.id, seq)
        for r, seq, entry in zip(ingested.result.results, ingested.seqs, entries, strict=True)
        if r.id is not None
    ]


def _accepted_one(item: EventDraft | Rejection, ingested: Ingested) -> tuple[EventResult, int | None, int | None]:
    result = ingested.result.results[0]
    if result.status == "rejected" or result.id is None:
        raise ApiError(400, ERROR, data_as(item, result.errors, "properties"))
    return result, ingested.seqs[0], ingested.partitions[0]


def routes(services: Services) -> list[BaseRoute]:
    settings = services.settings
    max_events = min(MAX_EVENTS, settings.max_batch_events)

    async def read_one(request: Request) -> EventDraft | Rejection:
        body = await request.body()
        checked = check_fields(read_object(body, settings.max_json_depth, NATIVE_CODES), SPECS, NATIVE_CODES)
        return Rejection(checked.errors, body) if checked.errors else _draft(checked, body)

    async def ingest(request: Request) -> Response:
        principal = await authorize(services, request, "ingest")
        item = await read_one(request)
        ingested = await services.pipeline.ingest(principal, [item], dialect=NAME)
        _accepted_one(item, ingested)
        return json_response(Accepted(True, _message_ids(ingested)[0]), 202)

    async def ingest_batch(request: Request) -> Response:
        principal = await authorize(services, request, "ingest")
        body = read_object(await request.body(), settings.max_json_depth, NATIVE_CODES)
        items = [read_item(bytes(raw)) for raw in read_batch(body, "events", max_events, NATIVE_CODES)]
        ingested = await services.pipeline.ingest(principal, items, dialect=NAME)
        results = ingested.result.results
        ids = _message_ids(ingested)
        errors = [
            BatchError(r.index, e.field, e.code, e.message)
            for r in results
            for e in data_as(items[r.index], r.errors, "properties")
        ]
        rejected = ingested.result.rejected
        return json_response(BatchAccepted(len(items) - rejected, rejected, ids, errors or None), 202)

    async def ingest_sync(request: Request) -> Response:
        principal = await authorize(services, request, "ingest")
        item = await read_one(request)
        result, seq, partition = _accepted_one(item, await services.pipeline.ingest(principal, [item], dialect=NAME))
        assert result.id is not None and seq is not None and partition is not None
        # For a duplicate these are the original event and its offset: its fact is the answer.
        return json_response(await processed(services, principal, result.id, partition, seq))

    routes: list[BaseRoute] = []
    for prefix in PREFIXES:
        routes += [
            Route(f"{prefix}/ingest/events", ingest, methods=["POST"]),
            Route(f"{prefix}/ingest/events/batch", ingest_batch, methods=["POST"]),
            Route(f"{prefix}/ingest/events/sync", ingest_sync, methods=["POST"]),
        ]
    return routes
