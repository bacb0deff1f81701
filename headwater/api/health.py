"""`/healthz` (the process answers) and `/readyz` (the store accepts writes)."""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import json_response
from headwater.services import Services
from headwater.storage.base import StoreError


class Health(msgspec.Struct):
    status: Literal["ok"]


class Ready(msgspec.Struct):
    status: Literal["ready"]


def routes(services: Services) -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return json_response(Health("ok"))

    async def readyz(request: Request) -> Response:
        try:
            await services.store.ping()
        except StoreError as exc:
            return json_response({"error": f"store not ready: {exc}", "details": []}, status=503)
        return json_response(Ready("ready"))

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
