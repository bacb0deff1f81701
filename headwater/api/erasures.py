"""Data protection routes: the retention setting (`/v1/settings/retention`), erasing a subject
(`DELETE /v1/subjects/{subject_id}`) and erasing a time range (`POST /v1/erasures`), each in the
key's tenant and mode, for admin keys only. How an erasure proceeds is `headwater.erasure`.

An erasure answers once it is done, with a receipt of what it deleted. Erasing is idempotent:
a subject erased twice, or never seen, gets a receipt of zeros, not a 404 (the caller wants it
gone, and gone it is).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, json_response, read_json
from headwater.clock import system_now
from headwater.erasure import Eraser
from headwater.errors import bad_request
from headwater.openapi import AUTH_ERRORS, BODY_ERRORS, Body, Doc
from headwater.parsing import RANGE_BOUND_SCHEMA, parse_range_bound
from headwater.services import Services
from headwater.storage.records import AuditValue, ErasureCounts

# A hundred years: bounds a typo (days for seconds) without limiting any real policy.
MAX_RETENTION_DAYS = 36_500
MAX_SUBJECT_LENGTH = 256  # what ingest accepts
RangeBound = Annotated[str, msgspec.Meta(extra_json_schema=RANGE_BOUND_SCHEMA)]


class Retention(msgspec.Struct, forbid_unknown_fields=True):
    """How many days the tenant's events are kept in this mode, by event time; null: forever."""

    days: Annotated[int, msgspec.Meta(ge=1, le=MAX_RETENTION_DAYS)] | None


class SubjectReceipt(msgspec.Struct):
    subject: str
    deleted: ErasureCounts


class RangeErasure(msgspec.Struct, forbid_unknown_fields=True):
    """The events whose event time is in [from, to) (a date as `to` covers that day), and the
    quarantined items received then. Both bounds are required: a whole tenant is not erased by
    leaving one out. A range that ends before it starts holds nothing, as in the lists."""

    time_from: RangeBound = msgspec.field(name="from")
    time_to: RangeBound = msgspec.field(name="to")


class RangeReceipt(msgspec.Struct):
    time_from: datetime = msgspec.field(name="from")
    time_to: datetime = msgspec.field(name="to")
    deleted: ErasureCounts


def _bound(value: str, field: str, *, upper: bool) -> datetime:
    try:
        return parse_range_bound(value, upper=upper)
    except ValueError as exc:
        raise bad_request(str(exc), field, "invalid_format") from None


def _text(at: datetime) -> str:
    """As the receipt shows it."""
    return at.isoformat().replace("+00:00", "Z")


def routes(services: Services) -> list[BaseRoute]:
    registry = services.store.registry
    eraser = Eraser(services.store)

    async def get_retention(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        return json_response(Retention(await registry.get_retention(principal.tenant, principal.mode)))

    async def put_retention(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        body: Retention = await read_json(request, Retention)
        await registry.put_retention(principal.tenant, principal.mode, body.days, system_now())
        await audit.record(services, principal, "retention.update", None, days=body.days)
        return json_response(body)

    async def erase_subject(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        subject = request.path_params["subject_id"]
        if len(subject) > MAX_SUBJECT_LENGTH:
            message = f"a subject is at most {MAX_SUBJECT_LENGTH} characters"
            raise bad_request(message, "subject_id", "too_long")
        counts = await eraser.erase(principal.tenant, principal.mode, subject=subject)
        await audit.record(services, principal, "erasure.subject", subject, events=counts.events)
        return json_response(SubjectReceipt(subject, counts))

    async def erase_range(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        body: RangeErasure = await read_json(request, RangeErasure)
        low = _bound(body.time_from, "from", upper=False)
        high = _bound(body.time_to, "to", upper=True)
        counts = await eraser.erase(principal.tenant, principal.mode, time_from=low, time_to=high)
        summary: dict[str, AuditValue] = {"from": _text(low), "to": _text(high), "events": counts.events}
        await audit.record(services, principal, "erasure.range", None, **summary)
        return json_response(RangeReceipt(low, high, counts))

    return [
        Route("/v1/settings/retention", get_retention, methods=["GET"]),
        Route("/v1/settings/retention", put_retention, methods=["PUT"]),
        Route("/v1/subjects/{subject_id}", erase_subject, methods=["DELETE"]),
        Route("/v1/erasures", erase_range, methods=["POST"]),
    ]


def docs() -> dict[tuple[str, str], Doc]:
    tags = ("data protection",)
    return {
        ("GET", "/v1/settings/retention"): Doc("How long events are kept", tags, {200: Retention}, errors=AUTH_ERRORS),
        ("PUT", "/v1/settings/retention"): Doc(
            "Set how long events are kept",
            tags,
            {200: Retention},
            description=(
                f"`days`: 1-{MAX_RETENTION_DAYS}, or null to keep events forever. Events whose event time is older,"
                " with what was derived from them and quarantined items received that long ago, are deleted"
                " in the background by a worker."
            ),
            body=(Body(Retention),),
            errors=(*BODY_ERRORS, *AUTH_ERRORS),
        ),
        ("DELETE", "/v1/subjects/{subject_id}"): Doc(
            "Erase a subject",
            tags,
            {200: SubjectReceipt},
            description=(
                "Deletes the subject's events (award events too), quarantined items, fact effects, actions,"
                " enrolments, messages, profile, progress, badges and points; the receipt counts them."
                " A subject with nothing stored gets a receipt of zeros."
            ),
            errors=AUTH_ERRORS,
        ),
        ("POST", "/v1/erasures"): Doc(
            "Erase a time range",
            tags,
            {200: RangeReceipt},
            description=(
                "Deletes the events whose event time is in [from, to), what was derived from each of them,"
                " and the quarantined items received in that range; the receipt counts them."
            ),
            body=(Body(RangeErasure),),
            errors=(*BODY_ERRORS, *AUTH_ERRORS),
        ),
    }
