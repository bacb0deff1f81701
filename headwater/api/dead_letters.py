"""`/v1/dead-letters`: events a consumer could not apply, passed over so that the rest went on.

A retry asks the worker that holds the event's partition to apply it again; the dead letter
says `retrying` until it does, then `resolved` (or `dead` again, one attempt on, with the new
error).
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, int_param, json_response, position_cursor
from headwater.clock import system_now
from headwater.errors import ApiError
from headwater.services import Services
from headwater.storage.records import DeadLetter


class DeadLetterPage(msgspec.Struct):
    data: list[DeadLetter]
    next_cursor: str | None


def routes(services: Services) -> list[BaseRoute]:
    derived = services.store.derived

    async def list_dead_letters(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        limit = int_param(request, "limit", 100, 1, 1000)
        rows = await derived.list_dead_letters(principal.tenant, principal.mode, position_cursor(request), limit + 1)
        page = rows[:limit]
        return json_response(DeadLetterPage([d for _, d in page], str(page[-1][0]) if len(rows) > limit else None))

    async def get_dead_letter(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        found = await derived.get_dead_letter(principal.tenant, principal.mode, request.path_params["dead_letter_id"])
        if found is None:
            raise ApiError(404, "no such dead letter")
        return json_response(found)

    async def retry(request: Request) -> Response:
        principal = await authorize(services, request, "configure")
        dead_letter_id = request.path_params["dead_letter_id"]
        found = await derived.get_dead_letter(principal.tenant, principal.mode, dead_letter_id)
        if found is None:
            raise ApiError(404, "no such dead letter")
        retried = await derived.retry_dead_letter(principal.tenant, principal.mode, dead_letter_id, system_now())
        if retried is None:
            raise ApiError(409, f"only a dead letter that is dead can be retried; this one is {found.status}")
        return json_response(retried, status=202)

    return [
        Route("/v1/dead-letters", list_dead_letters, methods=["GET"]),
        Route("/v1/dead-letters/{dead_letter_id}", get_dead_letter, methods=["GET"]),
        Route("/v1/dead-letters/{dead_letter_id}/retry", retry, methods=["POST"]),
    ]
