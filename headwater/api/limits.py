"""Rate limits: a key's own (`/v1/keys/{key_id}/rate-limit`) and its tenant's default for every
key (`/v1/settings/rate-limit`); see headwater.ratelimit. Admins only."""

from __future__ import annotations

from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response, read_json
from headwater.auth import Principal
from headwater.errors import ApiError
from headwater.services import Services
from headwater.storage.registry import RateLimit

Source = Literal["key", "tenant", "server"]


class RateLimitPut(msgspec.Struct, forbid_unknown_fields=True):
    """`null` removes the limit (the next one down applies: the tenant's, then the server's)."""

    rate_limit: RateLimit | None


class KeyRateLimit(msgspec.Struct):
    key_id: str
    rate_limit: RateLimit | None  # the key's own
    effective: RateLimit | None  # what its requests are held to; null: not limited
    source: Source | None


class TenantRateLimit(msgspec.Struct):
    rate_limit: RateLimit | None  # the tenant's default for its keys
    effective: RateLimit | None  # what a key without its own limit is held to
    source: Literal["tenant", "server"] | None


def routes(services: Services) -> list[BaseRoute]:
    registry = services.store.registry
    limiter = services.pipeline.limiter
    server = limiter.default if limiter is not None else None

    async def managed_key(request: Request) -> tuple[Principal, str]:
        principal = await authorize(services, request, "admin")
        key_id = request.path_params["key_id"]
        modes = ("live", "test") if principal.mode == "live" else ("test",)  # as /v1/keys
        if not any(k.id == key_id and k.mode in modes for k in await registry.list_keys(principal.tenant)):
            raise ApiError(404, "no such key")
        return principal, key_id

    async def key_view(principal: Principal, key_id: str) -> KeyRateLimit:
        own, tenant = await registry.get_rate_limits(principal.tenant, key_id)
        source: Source | None = "key" if own else "tenant" if tenant else "server" if server else None
        return KeyRateLimit(key_id, own, own or tenant or server, source)

    async def tenant_view(principal: Principal) -> TenantRateLimit:
        _, tenant = await registry.get_rate_limits(principal.tenant, "")
        return TenantRateLimit(tenant, tenant or server, "tenant" if tenant else "server" if server else None)

    async def get_key(request: Request) -> Response:
        return json_response(await key_view(*await managed_key(request)))

    async def put_key(request: Request) -> Response:
        principal, key_id = await managed_key(request)
        body: RateLimitPut = await read_json(request, RateLimitPut)
        await registry.put_rate_limit(principal.tenant, key_id, body.rate_limit)
        if limiter is not None:
            limiter.forget()
        return json_response(await key_view(principal, key_id))

    async def get_tenant(request: Request) -> Response:
        return json_response(await tenant_view(await authorize(services, request, "admin")))

    async def put_tenant(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        body: RateLimitPut = await read_json(request, RateLimitPut)
        await registry.put_rate_limit(principal.tenant, None, body.rate_limit)
        if limiter is not None:
            limiter.forget()
        return json_response(await tenant_view(principal))

    return [
        Route("/v1/keys/{key_id}/rate-limit", get_key, methods=["GET"]),
        Route("/v1/keys/{key_id}/rate-limit", put_key, methods=["PUT"]),
        Route("/v1/settings/rate-limit", get_tenant, methods=["GET"]),
        Route("/v1/settings/rate-limit", put_tenant, methods=["PUT"]),
    ]
