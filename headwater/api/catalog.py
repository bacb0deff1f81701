"""`/v1/event-types`: the event catalog, discovered from what each tenant sent."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response
from headwater.services import Services
from headwater.storage.base import CatalogEntry

# Folded in per read so the answer is current; the background task keeps this small.
REFRESH_PER_READ = 200_000


class CatalogList(msgspec.Struct):
    data: list[CatalogEntry]


def routes(services: Services) -> list[BaseRoute]:
    async def list_types(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        await services.store.refresh_catalog(REFRESH_PER_READ)
        return json_response(CatalogList(await services.store.list_catalog(principal.tenant, principal.mode)))

    return [Route("/v1/event-types", list_types, methods=["GET"])]
