"""`/v1/event-types`: the event catalog, discovered from what each tenant sent."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response
from headwater.processing.catalog import NAME as CATALOG
from headwater.services import Services
from headwater.storage.records import WHOLE_LOG, CatalogEntry

# A read waits this long at most for the catalog consumer to reach the log's head, so that
# what was just sent is counted; after that it answers with what the catalog has.
CURRENT_WITHIN_SECONDS = 5.0


class CatalogList(msgspec.Struct):
    data: list[CatalogEntry]


def routes(services: Services) -> list[BaseRoute]:
    store = services.store

    async def list_types(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        head = await store.log.head()
        await store.derived.wait_checkpoint([CATALOG], WHOLE_LOG, head, CURRENT_WITHIN_SECONDS)
        return json_response(CatalogList(await store.derived.list_catalog(principal.tenant, principal.mode)))

    return [Route("/v1/event-types", list_types, methods=["GET"])]
