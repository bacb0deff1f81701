"""`/v1/keys`: API key management for a tenant's admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response, read_json
from headwater.auth import Principal
from headwater.errors import ApiError
from headwater.keys import create_key
from headwater.services import Services
from headwater.storage.registry import KeyRecord, Role


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    mode: Literal["live", "test"] | None = None
    name: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class KeyList(msgspec.Struct):
    data: list[KeyRecord]


def _manages(principal: Principal) -> tuple[str, ...]:
    """The modes of the keys an admin key may create, list and revoke: a live admin manages
    the whole tenant, a test admin only test keys."""
    return ("live", "test") if principal.mode == "live" else ("test",)


def routes(services: Services) -> list[BaseRoute]:
    async def create(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        body: KeyCreate = await read_json(request, KeyCreate)
        mode = body.mode or principal.mode
        if mode not in _manages(principal):
            # A test key is the kind that ends up in a laptop's .env: it must not mint live keys.
            raise ApiError(403, "a test-mode key may only manage test-mode keys")
        created = await create_key(services.store, principal.tenant, body.role, mode, body.name)
        return json_response(created, status=201)

    async def list_keys(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        keys = await services.store.registry.list_keys(principal.tenant)
        return json_response(KeyList([k for k in keys if k.mode in _manages(principal)]))

    async def revoke(request: Request) -> Response:
        principal = await authorize(services, request, "admin")
        key_id = request.path_params["key_id"]
        visible = {
            k.id for k in await services.store.registry.list_keys(principal.tenant) if k.mode in _manages(principal)
        }
        if key_id not in visible or not await services.store.registry.revoke_key(
            principal.tenant, key_id, datetime.now(UTC).replace(microsecond=0)
        ):
            raise ApiError(404, "no such active key")
        services.auth.forget()
        revoked = next(k for k in await services.store.registry.list_keys(principal.tenant) if k.id == key_id)
        return json_response(revoked)

    return [
        Route("/v1/keys", create, methods=["POST"]),
        Route("/v1/keys", list_keys, methods=["GET"]),
        Route("/v1/keys/{key_id}", revoke, methods=["DELETE"]),
    ]
