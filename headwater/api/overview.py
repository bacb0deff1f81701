"""What the console shows about the caller and the server: `/v1/me`, `/v1/processing`, `/v1/stats`."""

from __future__ import annotations

from datetime import datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, int_param, json_response
from headwater.clock import from_us, system_now, to_us
from headwater.errors import ApiError
from headwater.events import Mode
from headwater.processing.status import status
from headwater.services import Services
from headwater.storage.registry import Role

MAX_MINUTES = 24 * 60


class Me(msgspec.Struct):
    """The key a request was made with: what the console's pages follow."""

    tenant: str
    mode: Mode
    role: Role
    key_id: str
    prefix: str
    name: str | None
    publishable: bool


class MinuteCount(msgspec.Struct):
    minute: datetime  # the minute's start
    events: int


class ReasonCount(msgspec.Struct):
    code: str
    count: int


class Stats(msgspec.Struct):
    """Events received per minute (every minute of the window, oldest first, zero where none
    came) and quarantined items' reasons by code, over the last `minutes`."""

    minutes: int
    ingest: list[MinuteCount]
    rejections: list[ReasonCount]


def routes(services: Services) -> list[BaseRoute]:
    store = services.store

    async def me(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        keys = await store.registry.list_keys(principal.tenant)
        record = next((k for k in keys if k.id == principal.key_id), None)
        if record is None:  # revoked between the look-up and now
            raise ApiError(401, "the API key is not valid")
        return json_response(
            Me(record.tenant, record.mode, record.role, record.id, record.prefix, record.name, record.publishable)
        )

    async def processing(request: Request) -> Response:
        # The log and its partitions are shared by every tenant: the head and the lags tell of
        # the whole server's traffic, which is an admin's to see, not any reader's.
        await authorize(services, request, "admin")
        return json_response(await status(store))

    async def stats(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        minutes = int_param(request, "minutes", 60, 1, MAX_MINUTES)
        now_minute = to_us(system_now()) // 60_000_000
        first = now_minute - minutes + 1
        since_us = first * 60_000_000
        counted = dict(await store.log.received_per_minute(principal.tenant, principal.mode, since_us))
        reasons = await store.log.rejection_counts(principal.tenant, principal.mode, since_us)
        return json_response(
            Stats(
                minutes,
                [MinuteCount(from_us(m * 60_000_000), counted.get(m, 0)) for m in range(first, now_minute + 1)],
                [ReasonCount(code, count) for code, count in reasons],
            )
        )

    return [
        Route("/v1/me", me, methods=["GET"]),
        Route("/v1/processing", processing, methods=["GET"]),
        Route("/v1/stats", stats, methods=["GET"]),
    ]
