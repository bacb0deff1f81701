"""`/v1/keys`: API key management for a tenant's admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, json_response, read_json
from headwater.auth import Principal
from headwater.cors import MAX_ORIGIN_LENGTH, parse_origin
from headwater.errors import ApiError, bad_request
from headwater.keys import create_key
from headwater.services import Services
from headwater.storage.registry import KeyRecord, RateLimit, Role

MAX_ORIGINS = 20
Origin = Annotated[str, msgspec.Meta(max_length=MAX_ORIGIN_LENGTH)]


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    mode: Literal["live", "test"] | None = None
    name: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    # The key's own rate limit (headwater.ratelimit); without one its tenant's or the server's applies.
    rate_limit: RateLimit | None = None
    # An ingest key for web pages on these origins (README: "Browsers").
    publishable: bool = False
    allowed_origins: Annotated[list[Origin], msgspec.Meta(max_length=MAX_ORIGINS)] | None = None


def _allowed_origins(body: KeyCreate) -> list[str] | None:
    """The origins of a publishable key, each as browsers send it; None for any other key."""
    if not body.publishable:
        if body.allowed_origins is not None:
            raise bad_request("only a publishable key has allowed_origins", "allowed_origins", "invalid")
        return None
    if body.role != "ingest":
        raise bad_request("only an ingest key can be publishable", "publishable", "invalid")
    if not body.allowed_origins:
        raise bad_request(
            "a publishable key needs allowed_origins: the origins whose pages may use it", "allowed_origins", "required"
        )
    origins = []
    for index, text in enumerate(body.allowed_origins):
        try:
            origins.append(parse_origin(text))
        except ValueError as exc:
            raise bad_request(f"allowed_origins.{index}: {exc}", f"allowed_origins.{index}", "invalid") from None
    return list(dict.fromkeys(origins))


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
        origins = _allowed_origins(body)
        mode = body.mode or principal.mode
        if mode not in _manages(principal):
            # A test key is the kind that ends up in a laptop's .env: it must not mint live keys.
            raise ApiError(403, "a test-mode key may only manage test-mode keys")
        created = await create_key(services.store, principal.tenant, body.role, mode, body.name, origins)
        if body.rate_limit is not None:
            # Before the key is shown, so that it is never used unlimited.
            await services.store.registry.put_rate_limit(principal.tenant, created.id, body.rate_limit)
            created = msgspec.structs.replace(created, rate_limit=body.rate_limit)
        await audit.record(services, principal, "key.create", created.id, role=body.role, mode=mode, name=body.name)
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
        await audit.record(services, principal, "key.revoke", key_id)
        revoked = next(k for k in await services.store.registry.list_keys(principal.tenant) if k.id == key_id)
        return json_response(revoked)

    return [
        Route("/v1/keys", create, methods=["POST"]),
        Route("/v1/keys", list_keys, methods=["GET"]),
        Route("/v1/keys/{key_id}", revoke, methods=["DELETE"]),
    ]
