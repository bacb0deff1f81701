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


# Freeing space is an operator's job, not a moment's: a client that retries at once only adds load.
STORAGE_FULL_RETRY_SECONDS = 30


def storage_full() -> ApiError:
    """A write refused because the store's disk is full: nothing of the request was stored."""
    return ApiError(
        507,
        "storage is full: nothing of this request was stored; retry once space is freed",
        headers={"Retry-After": str(STORAGE_FULL_RETRY_SECONDS)},
    )


def bad_request(error: str, field: str = "", code: str = "invalid", message: str = "") -> ApiError:
    return ApiError(400, error, [FieldError(field, code, message or error)])
