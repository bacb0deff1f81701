"""`/healthz` (the process answers) and `/readyz` (the store accepts writes).

`/readyz` says how each backend is: `"store": "ok"` or what is wrong with it, and with a bus
`"bus"` the same way. A bus that is down leaves the server ready (200, `"status": "degraded"`):
events are still accepted and processed, only published later and waited for by polling the
store. The store being down is a 503: nothing can be accepted.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import json_response
from headwater.bus import BusError
from headwater.events import FieldError
from headwater.services import Services
from headwater.storage.base import StoreError


class Health(msgspec.Struct):
    status: Literal["ok"]


class Ready(msgspec.Struct, omit_defaults=True):
    status: Literal["ready", "degraded"]
    store: Literal["ok"]
    bus: str | None = None  # only with a bus: "ok", or "unavailable: ..."


class NotReady(msgspec.Struct, omit_defaults=True):
    error: str
    details: list[FieldError]
    store: str  # "unavailable: ..."
    bus: str | None = None


def routes(services: Services) -> list[BaseRoute]:
    async def healthz(request: Request) -> Response:
        return json_response(Health("ok"))

    async def bus_state() -> str | None:
        if services.bus is None:
            return None
        try:
            await services.bus.ping()
        except BusError as exc:
            return f"unavailable: {exc}"
        return "ok"

    async def readyz(request: Request) -> Response:
        bus = await bus_state()
        try:
            await services.store.ping()
        except StoreError as exc:
            return json_response(NotReady(f"store not ready: {exc}", [], f"unavailable: {exc}", bus), status=503)
        return json_response(Ready("ready" if bus in (None, "ok") else "degraded", "ok", bus))

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
