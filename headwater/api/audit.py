"""`/v1/audit`: the administrative changes of a tenant, newest first, and `record`, the one
call each admin route makes once its change is stored.

An entry is written right after the change it records, not in the change's own transaction:
the registry's writes are one method each, and keeping every route's audit a single call beside
them keeps the two apart. A change whose entry then fails to be written answers with the store's
error (503), the change itself being stored. The summary holds plain values a reader needs to
tell what changed (a role, a url, a count), never a secret, a key or an event's data.

Visibility follows the keys': a live admin key sees the entries of both modes of its tenant, a
test admin key only those made with test keys. No tenant ever sees another's.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, int_param, json_response
from headwater.auth import Principal
from headwater.clock import system_now
from headwater.errors import bad_request
from headwater.events import Mode
from headwater.ids import new_prefixed_id
from headwater.openapi import AUTH_ERRORS, Doc, Param
from headwater.services import Services
from headwater.storage.records import AuditEntry, AuditValue

CURSOR_PATTERN = "^[0-9]{1,19}$"


class AuditPage(msgspec.Struct):
    data: list[AuditEntry]
    next_cursor: str | None


async def record(
    services: Services,
    principal: Principal,
    action: str,
    resource_id: str | None = None,
    **summary: AuditValue,
) -> None:
    """Note that `principal` did `action` (`<resource type>.<verb>`, e.g. `webhook.rotate`)."""
    resource_type = action.partition(".")[0]
    entry = AuditEntry(
        id=new_prefixed_id("aud"),
        tenant=principal.tenant,
        mode=principal.mode,
        key_id=principal.key_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        summary=summary,
        at=system_now(),
    )
    await services.store.registry.add_audit(entry)


def visible_modes(principal: Principal) -> tuple[Mode, ...]:
    return ("live", "test") if principal.mode == "live" else ("test",)


def _cursor(request: Request) -> int | None:
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19):
        raise bad_request("cursor is not one this API returned", "cursor", "invalid")
    return int(raw)


def routes(services: Services) -> list[BaseRoute]:
    async def list_audit(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        limit = int_param(request, "limit", 100, 1, 1000)
        rows = await services.store.registry.list_audit(
            principal.tenant, visible_modes(principal), _cursor(request), limit + 1
        )
        page = rows[:limit]
        return json_response(AuditPage([e for _, e in page], str(page[-1][0]) if len(rows) > limit else None))

    return [Route("/v1/audit", list_audit, methods=["GET"])]


def docs() -> dict[tuple[str, str], Doc]:
    return {
        ("GET", "/v1/audit"): Doc(
            "The audit log of administrative changes",
            ("audit",),
            {200: AuditPage},
            description=(
                "Newest first: key, trigger, type mapping, schema, webhook, badge, challenge, settings, retention"
                " and erasure changes, each with the acting key's id. Admin keys only; a test-mode key sees"
                " test-mode entries only."
            ),
            params=(
                Param("limit", Annotated[int, msgspec.Meta(ge=1, le=1000)], description="Page size, 1-1000."),
                Param(
                    "cursor",
                    Annotated[str, msgspec.Meta(pattern=CURSOR_PATTERN)],
                    description="`next_cursor` of the previous page.",
                ),
            ),
            errors=(400, *AUTH_ERRORS),
        ),
    }
