"""The ASGI application: hot ingest routes dispatched directly, everything else through Starlette."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send

from headwater import console, dialects, openapi, operations
from headwater.access_log import ROUTE_KEY, AccessLogMiddleware
from headwater.api import (
    audit,
    catalog,
    dead_letters,
    effects,
    erasures,
    events,
    gamification,
    health,
    keys,
    limits,
    live,
    metrics,
    overview,
    quarantine,
    schemas,
    triggers,
    webhooks,
)
from headwater.api.common import json_response
from headwater.bus import open_bus
from headwater.config import Settings
from headwater.cors import CorsMiddleware, OriginIndex
from headwater.dialects import analytics, data_events, segment
from headwater.dialects import gamification as gamification_dialect
from headwater.errors import ApiError, storage_full
from headwater.metrics import flush as flush_metrics
from headwater.middleware import BodyLimitMiddleware
from headwater.sealing import Sealer, seal_stored_secrets
from headwater.services import Services
from headwater.storage import open_store
from headwater.storage.base import Backpressure, StorageFull, StoreError

logger = logging.getLogger("headwater")

# Every route that takes events with an ingest key (POST), the ones browsers may call (headwater.cors).
# Not 002's customer events: it answers with what the event's triggers did, for admin and editor keys only.
INGEST_PATHS = frozenset(
    {
        "/v1/events",
        "/v1/cloudevents",
        "/v1/batch",
        *(f"/v1/{kind}" for kind in segment.KINDS),
        *(
            f"{prefix}/ingest/events{tail}"
            for prefix in gamification_dialect.PREFIXES
            for tail in ("", "/batch", "/sync")
        ),
        analytics.PATH,
        data_events.PATH,
    }
)


class HotPathDispatcher:
    """Sends the high-volume ingest routes straight to their ASGI callables.

    Starlette's router tries each route's regex in turn and builds a Request;
    for ingest that overhead is a visible share of the request cost.
    """

    def __init__(self, app: ASGIApp, hot: dict[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.hot.get((scope["method"], scope["path"]))
            if handler is not None:
                scope[ROUTE_KEY] = scope["path"]
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return Response(exc.body(), exc.status, exc.headers, media_type="application/json")


def _http_error(routes: list[BaseRoute], hot: dict[tuple[str, str], ASGIApp]) -> ExceptionHandler:
    """Starlette's HTTP errors in Headwater's error shape. A 405's `Allow` lists every method
    the path has (Starlette's names only those of the first route that matched the path); a
    path spelled out literally (`/v1/triggers/test`) is its own resource, not a template's."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            path = request.scope["path"]
            matching = [r for r in routes if isinstance(r, Route) and r.path_regex.match(path)]
            literal = [r for r in matching if r.path == path]
            methods = {method for method, hot_path in hot if hot_path == path}
            for route in literal or matching:
                methods |= route.methods or set()
            headers["Allow"] = ", ".join(sorted(methods))
        return json_response({"error": exc.detail, "details": []}, exc.status_code, headers)

    return handle


async def _store_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StorageFull):
        return await _api_error(request, storage_full())
    retry = str(exc.retry_after) if isinstance(exc, Backpressure) else "1"
    return json_response({"error": f"store unavailable: {exc}", "details": []}, 503, {"Retry-After": retry})


async def _internal_error(request: Request, exc: Exception) -> Response:
    return json_response({"error": "internal server error", "details": []}, 500)


def create_app(settings: Settings | None = None) -> ASGIApp:
    settings = settings or Settings()
    store = open_store(settings)
    bus = open_bus(settings, listen=True)
    services = Services.build(settings, store, bus)

    services.readers["native"] = events.draft_from
    services.readers["import"] = events.draft_from_line
    routes = [
        *health.routes(services),
        *metrics.routes(services),
        # Before `/v1/events/{event_id}`, which would take `live` for an id.
        *live.routes(services),
        *effects.routes(services),
        *events.routes(services),
        *overview.routes(services),
        *keys.routes(services),
        *limits.routes(services),
        *schemas.routes(services),
        *quarantine.routes(services),
        *catalog.routes(services),
        *triggers.routes(services),
        *webhooks.routes(services),
        *gamification.routes(services),
        *dead_letters.routes(services),
        *erasures.routes(services),
        *audit.routes(services),
        *console.routes(),
    ]
    for dialect in dialects.ALL:
        routes += dialect.routes(services)
        services.readers[dialect.NAME] = dialect.read_item

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The API does no derived work: workers (`headwater worker`) follow the log.
        await store.start()
        try:
            await seal_stored_secrets(store, Sealer(settings.secret_key))
        except BaseException:  # a key that does not open the secrets stops the start: the store closes first
            await store.close()
            raise
        if bus is not None:
            await bus.start()
        try:
            yield
        finally:
            if bus is not None:
                await bus.close()
            await store.close()
            flush_metrics()  # what this process counted since the last flush, before it exits

    hot: dict[tuple[str, str], ASGIApp] = {("POST", "/v1/events"): events.IngestEndpoint(services)}
    routes += openapi.routes(lambda: operations.document(starlette.routes, hot))

    starlette = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error(routes, hot),
            StoreError: _store_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    starlette.state.services = services
    origins = OriginIndex(store.registry.publishable_origins, settings.key_cache_seconds)
    limited = BodyLimitMiddleware(
        HotPathDispatcher(starlette, hot), settings.max_body_bytes, settings.max_compressed_body_bytes
    )
    return AccessLogMiddleware(CorsMiddleware(limited, INGEST_PATHS, origins))
