"""API errors and their JSON shape: {"error": str, "details": [{"field", "code", "message"}]}."""

from __future__ import annotations

import msgspec

from headwater.events import FieldError


class ErrorBody(msgspec.Struct):
    error: str
    details: list[FieldError] = msgspec.field(default_factory=list)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        details: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> bytes:
        return msgspec.json.encode(ErrorBody(self.error, self.details))


def bad_request(error: str, field: str = "", code: str = "invalid", message: str = "") -> ApiError:
    return ApiError(400, error, [FieldError(field, code, message or error)])
