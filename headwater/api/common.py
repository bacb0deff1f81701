"""Helpers for the Starlette routes: JSON responses, auth and query parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from headwater.auth import Permission, Principal
from headwater.errors import ApiError, bad_request
from headwater.parsing import decode_json, field_error
from headwater.services import Services
from headwater.storage.records import Position

_encoder = msgspec.json.Encoder()


def json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_encoder.encode(content), status, headers, media_type="application/json")


async def authorize(services: Services, request: Request, permission: Permission) -> Principal:
    return await services.auth.authenticate(request.scope["headers"], permission)


async def read_json(request: Request, type_: type[Any]) -> Any:
    body = await request.body()
    if not body:
        raise bad_request("request body is empty: send a JSON object", code="required")
    try:
        return decode_json(body, type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "request body is not valid", [field_error(exc)]) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer", name, "invalid_type") from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", name, "out_of_range")
    return value


def position_cursor(request: Request) -> Position | None:
    """A list's `cursor` that is a row's position in a list that spans partitions (actions,
    the outbox, attempts, dead letters)."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        return Position.parse(raw)
    except ValueError:
        raise bad_request("cursor is not one this API returned", "cursor", "invalid") from None
