"""`/v1/quarantine`: rejected items with their reasons, and replaying them through the pipeline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, int_param, json_response, read_json
from headwater.auth import Principal
from headwater.errors import bad_request
from headwater.events import EventDraft, FieldError, QuarantinedEvent, Rejection
from headwater.parsing import RANGE_BOUND_SCHEMA, parse_range_bound
from headwater.services import Services
from headwater.storage.log import QuarantineQuery

MAX_REPLAY = 1000


class QuarantinePage(msgspec.Struct):
    data: list[QuarantinedEvent]
    next_cursor: str | None


RangeBound = Annotated[str, msgspec.Meta(extra_json_schema=RANGE_BOUND_SCHEMA)]


class ReplayFilter(msgspec.Struct, forbid_unknown_fields=True):
    type: str | None = None
    received_from: RangeBound | None = msgspec.field(default=None, name="from")
    received_to: RangeBound | None = msgspec.field(default=None, name="to")


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(max_length=MAX_REPLAY)] | None = None
    filter: ReplayFilter | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLAY)] = MAX_REPLAY


class ReplayResult(msgspec.Struct):
    id: str
    status: Literal["accepted", "duplicate", "rejected"]
    event_id: str | None
    errors: list[FieldError]


class ReplayResponse(msgspec.Struct):
    replayed: int
    duplicates: int
    still_rejected: int
    results: list[ReplayResult]


def _bound(value: str | None, field: str, *, upper: bool) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_range_bound(value, upper=upper)
    except ValueError as exc:
        raise bad_request(str(exc), field, "invalid_format") from None


def _query_from(principal: Principal, body: ReplayRequest) -> QuarantineQuery:
    if (body.ids is None) == (body.filter is None):
        raise bad_request("send either ids or filter", "ids", "required")
    if body.ids is not None:
        if not body.ids:
            raise bad_request("ids must not be empty", "ids", "too_short")
        return QuarantineQuery(principal.tenant, principal.mode, ids=tuple(body.ids), limit=len(body.ids))
    assert body.filter is not None
    return QuarantineQuery(
        principal.tenant,
        principal.mode,
        type=body.filter.type,
        received_from=_bound(body.filter.received_from, "filter.from", upper=False),
        received_to=_bound(body.filter.received_to, "filter.to", upper=True),
        limit=body.limit,
    )


def routes(services: Services) -> list[BaseRoute]:
    async def list_quarantine(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        params = request.query_params
        status = params.get("status", "quarantined")
        if status not in ("quarantined", "replayed", "all"):
            raise bad_request("status must be quarantined, replayed or all", "status", "invalid")
        limit = int_param(request, "limit", 100, 1, 1000)
        query = QuarantineQuery(
            principal.tenant,
            principal.mode,
            type=params.get("type"),
            status=None if status == "all" else status,  # type: ignore[arg-type]
            received_from=_bound(params.get("from"), "from", upper=False),
            received_to=_bound(params.get("to"), "to", upper=True),
            before=params.get("cursor"),
            limit=limit + 1,
        )
        items = await services.store.log.list_quarantine(query)
        page = items[:limit]
        return json_response(QuarantinePage(page, page[-1].id if len(items) > limit else None))

    async def replay(request: Request) -> Response:
        principal = await authorize(services, request, "configure")
        body: ReplayRequest = await read_json(request, ReplayRequest)
        items = await services.store.log.list_quarantine(_query_from(principal, body))
        drafts: list[EventDraft | Rejection] = []
        for item in items:
            draft: EventDraft | Rejection
            if item.draft is not None:
                draft = item.draft
            else:
                reader = services.readers.get(item.dialect)
                raw = (item.raw or "").encode()
                draft = reader(raw) if reader else Rejection(item.reasons, raw)
            if isinstance(draft, EventDraft):
                # It happened when it first arrived, not now; and the quarantine id stands in as
                # the idempotency key, so replaying an item twice (say, after a crash) adds one event.
                draft = msgspec.structs.replace(
                    draft, time=draft.time or item.received_at, idempotency_key=draft.idempotency_key or item.id
                )
            drafts.append(draft)
        ingested = await services.pipeline.ingest(principal, drafts, dialect="replay", quarantine=False)
        results = [
            ReplayResult(item.id, r.status, r.id, r.errors)
            for item, r in zip(items, ingested.result.results, strict=True)
        ]
        now = datetime.now(UTC)
        done = [(r.id, r.event_id) for r in results if r.event_id is not None]
        if done:
            await services.store.log.mark_replayed(principal.tenant, principal.mode, done, now)
        failed = [(r.id, r.errors) for r in results if r.status == "rejected"]
        if failed:
            await services.store.log.update_quarantine_reasons(principal.tenant, principal.mode, failed)
        return json_response(
            ReplayResponse(ingested.result.accepted, ingested.result.duplicates, ingested.result.rejected, results)
        )

    return [
        Route("/v1/quarantine", list_quarantine, methods=["GET"]),
        Route("/v1/quarantine/replay", replay, methods=["POST"]),
    ]
