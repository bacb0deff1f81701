"""Reading untrusted JSON: nesting limits, timestamps and readable field errors.

Shared by every dialect, so that each API reports bad input the same way.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from headwater.events import FieldError

MAX_TIME_LENGTH = 64
# What `parse_range_bound` reads, as JSON Schema (for documentation: it does the checking).
RANGE_BOUND_SCHEMA: dict[str, Any] = {"maxLength": 64, "anyOf": [{"format": "date"}, {"format": "date-time"}]}
T = TypeVar("T")
_FLOAT_FOR_INT = re.compile(r"Expected `int\b[^`]*`, got `float`")

_STRING = re.compile(rb'"[^"]*"')
# Objects and arrays nest alike: `{}` become `[]`, and everything but brackets and quotes goes.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURAL = bytes(range(256)).translate(None, b'{}[]"')


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """True when valid JSON `body` nests objects/arrays deeper than `limit`.

    Works on the bytes with C-level string operations (no Python loop per
    character): drop escapes, keep only brackets (one kind) and quotes, drop
    string contents, then peel innermost pairs `limit` times.
    """
    if body.count(b"{") + body.count(b"[") <= limit:
        return False
    if b"\\" in body:
        # Escapes are read left to right: an escaped backslash first, then an escaped quote.
        # Done before dropping other bytes: in `"\n\""` the `n` must still be there, or
        # the backslash of `\n` would pair with the one of `\"`.
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    s = body.translate(_BRACKETS, _NOT_STRUCTURAL)
    s = s.replace(b'""', b"")
    if b'"' in s:
        s = _STRING.sub(b"", s)
    for _ in range(limit):
        if not s:
            return False
        # One pass removes only the pairs that were innermost before it: one level.
        s = s.replace(b"[]", b"")
    return bool(s)


def parse_time(value: str) -> datetime:
    """An ISO 8601 / RFC 3339 timestamp as an aware UTC datetime; no offset means UTC.

    Raises ValueError with a readable message.
    """
    if len(value) > MAX_TIME_LENGTH:
        raise ValueError(f"timestamp longer than {MAX_TIME_LENGTH} characters")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp out of range: {value!r}") from None


def parse_range_bound(value: str, *, upper: bool) -> datetime:
    """A query bound: a date or a datetime. A date as an upper bound covers that whole day,
    so the exclusive bound it returns is the next midnight. A bound past either end of the
    datetime range (`9999-12-31` as an upper bound, `0001-01-01T00:00+01:00`) is that end."""
    if len(value) == 10:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date or timestamp: {value!r}") from None
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if not upper:
            return start
        return start + timedelta(days=1) if day < date.max else datetime.max.replace(tzinfo=UTC)
    try:
        return parse_time(value)
    except ValueError:
        # Still a valid timestamp when only its UTC time is before year 1 or after year 9999.
        try:
            parsed = datetime.fromisoformat(value) if len(value) <= MAX_TIME_LENGTH else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise
    return (datetime.min if parsed.year == 1 else datetime.max).replace(tzinfo=UTC)


_REQUIRED = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_AT = re.compile(r" - at `\$(.*)`$")


def field_error(exc: msgspec.ValidationError, prefix: str = "") -> FieldError:
    """Turn msgspec's message into a FieldError with a dotted field path and a stable code."""
    message = str(exc)
    path = ""
    at = _AT.search(message)
    if at:
        path = at.group(1)
        message = message[: at.start()]
    parts = [p for p in re.split(r"[.\[\]]+", path) if p]
    code = "invalid"
    if m := _REQUIRED.match(message):
        parts.append(m.group(1))
        code = "required"
    elif m := _UNKNOWN.match(message):
        parts.append(m.group(1))
        code = "unknown_field"
    elif "length <=" in message:
        code = "too_long"
    elif "length >=" in message:
        code = "too_short"
    elif message.startswith("Expected"):
        code = "invalid_type"
    if prefix:
        parts.insert(0, prefix)
    return FieldError(field=".".join(parts), code=code, message=message)


def _integral(value: Any) -> Any:
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is dict:
        return {key: _integral(item) for key, item in value.items()}
    if type(value) is list:
        return [_integral(item) for item in value]
    return value


def decode_json(body: bytes, type_: type[T] | Any) -> T:
    """`msgspec.json.decode(body, type=type_)`, except that an integral number written as a float
    (`3.0`, `1e3`) is read as the integer it is wherever an integer is expected, as JSON (and JSON
    Schema's `integer`) has it. Only a body that fails on exactly that is decoded a second time."""
    try:
        result: T = msgspec.json.decode(body, type=type_)
        return result
    except msgspec.ValidationError as exc:
        if not _FLOAT_FOR_INT.match(str(exc)):
            raise
    normalized = msgspec.json.encode(_integral(msgspec.json.decode(body)))
    result = msgspec.json.decode(normalized, type=type_)
    return result
