"""`/v1/schemas`: versioned JSON Schemas per event type, with an enforcement mode; a key's
tenant and mode (live or test) has its own, as for every definition."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, json_response, read_json
from headwater.errors import ApiError, bad_request
from headwater.schemas import SchemaError, compile_schema
from headwater.services import Services
from headwater.storage.registry import Enforcement, SchemaVersion


class SchemaPut(msgspec.Struct, forbid_unknown_fields=True):
    schema: msgspec.Raw
    # Soft by default: registering a schema never starts rejecting events until asked to.
    enforcement: Enforcement = "soft"


class SchemaList(msgspec.Struct):
    data: list[SchemaVersion]


def _event_type(request: Request) -> str:
    type_: str = request.path_params["type"]
    if not 1 <= len(type_) <= 128:
        raise bad_request("event type must be 1-128 characters", "type", "invalid")
    return type_


def routes(services: Services) -> list[BaseRoute]:
    async def put_schema(request: Request) -> Response:
        principal = await authorize(services, request, "configure")
        type_ = _event_type(request)
        body: SchemaPut = await read_json(request, SchemaPut)
        schema = bytes(body.schema)
        try:
            compile_schema(schema)
        except SchemaError as exc:
            raise bad_request(str(exc), "schema", "invalid_schema") from None
        version = await services.store.registry.put_schema(
            principal.tenant, principal.mode, type_, schema, body.enforcement, datetime.now(UTC).replace(microsecond=0)
        )
        services.schemas.forget(principal.tenant, principal.mode)
        await audit.record(services, principal, "schema.update", type_, version=version.version)
        return json_response(version, status=201)

    async def list_schemas(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        return json_response(SchemaList(await services.store.registry.latest_schemas(principal.tenant, principal.mode)))

    async def get_schema(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        versions = await services.store.registry.schema_versions(principal.tenant, principal.mode, _event_type(request))
        if not versions:
            raise ApiError(404, "no schema for this event type")
        return json_response(versions[-1])

    async def list_versions(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        versions = await services.store.registry.schema_versions(principal.tenant, principal.mode, _event_type(request))
        if not versions:
            raise ApiError(404, "no schema for this event type")
        return json_response(SchemaList(versions))

    return [
        Route("/v1/schemas", list_schemas, methods=["GET"]),
        Route("/v1/schemas/{type}", put_schema, methods=["PUT"]),
        Route("/v1/schemas/{type}", get_schema, methods=["GET"]),
        Route("/v1/schemas/{type}/versions", list_versions, methods=["GET"]),
    ]
