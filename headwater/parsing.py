"""Reading untrusted JSON: nesting limits, timestamps and readable field errors.

Shared by every dialect, so that each API reports bad input the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
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


# JSON allows any number; Headwater keeps only what a 64-bit float or integer holds, so that
# every consumer (and every client reading events back) can read every event.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1  # signed or unsigned: an unsigned 64-bit id must still fit
MAX_NUMBER_ERRORS = 50
OUT_OF_RANGE = "number_out_of_range"
OUT_OF_RANGE_MESSAGE = "number out of range: a float must be finite in 64 bits, an integer from -2^63 to 2^64-1"

# Such a number has a run of 20 digits, or of 19 after a minus (2^64-1 has 20 digits, -2^63
# has 19), or an exponent of 3 digits (below e100 a float overflows only with over 200 digits; a
# negative exponent can only underflow, to a finite 0). Digits become `0`, `e`/`E` become `e`,
# a `+` goes (`e+400` reads `e400`), a `-` stays and everything else is a space: three
# substring searches then find every candidate, at C speed. A false alarm (`1e400` in a
# string) only costs the exact check.
_SHAPE = bytes(
    ord("0") if c in b"0123456789" else ord("e") if c in b"eE" else ord("-") if c == ord("-") else ord(" ")
    for c in range(256)
)
_LONG_RUN = b"0" * 20
_LONG_NEGATIVE = b"-" + b"0" * 19
_LONG_EXPONENT = b"e000"


def may_hold_out_of_range(datas: Sequence[bytes]) -> bool:
    """False when no JSON value of `datas` holds a number out of the 64-bit range, which is
    nearly always. They are scanned as one: a batch of ordinary events pays a fraction of a
    call each."""
    shape = b" ".join(datas).translate(_SHAPE, b"+")
    return shape.find(_LONG_RUN) >= 0 or shape.find(_LONG_EXPONENT) >= 0 or shape.find(_LONG_NEGATIVE) >= 0


def is_number(value: Any) -> bool:
    """A number as Headwater takes one: a finite float, or an integer in the 64-bit range
    (`true` is not one). Data in the log can still hold others; they count as non-numbers."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and MIN_INT <= value <= MAX_INT


def _float(text: str) -> float | Decimal:
    value = float(text)
    return value if math.isfinite(value) else Decimal(text)


def _int(text: str) -> int | Decimal:
    # The length first: int() refuses more than 4,300 digits, and 2^64 has 20.
    if len(text) <= 21 and MIN_INT <= (value := int(text)) <= MAX_INT:
        return value
    return Decimal(text)


def decode_numbers_safely(data: bytes) -> Any:
    """JSON as Python values, with each number out of the 64-bit range as a `Decimal`: the one
    type no condition, metric or window takes for a number, and that encodes (as a string)."""
    return json.loads(data, parse_float=_float, parse_int=_int)


def decode_data(data: bytes) -> Any:
    """An event's `data` from the log, as Python values. Events stored before ingest refused
    out-of-range numbers may hold them: msgspec cannot decode such a float (nor an integer of
    thousands of digits), so that data is decoded again with each of them as a `Decimal`.
    (Smaller integers past 64 bits decode as ints; `is_number` does not take them either.)"""
    try:
        return msgspec.json.decode(data)
    except msgspec.ValidationError:
        return decode_numbers_safely(bytes(data))


def out_of_range_numbers(data: bytes, prefix: str = "data") -> list[FieldError]:
    """A field error (`data.items.0.price`) for each number in JSON `data` that a 64-bit float
    or integer cannot hold; empty, after one cheap scan, for nearly all data."""
    if not may_hold_out_of_range((data,)):
        return []
    errors: list[FieldError] = []
    pending: list[tuple[str, Any]] = [(prefix, decode_numbers_safely(bytes(data)))]
    while pending and len(errors) < MAX_NUMBER_ERRORS:
        path, value = pending.pop()
        if type(value) is Decimal:
            errors.append(FieldError(path, OUT_OF_RANGE, OUT_OF_RANGE_MESSAGE))
        elif type(value) is dict:
            pending += ((f"{path}.{key}", item) for key, item in reversed(value.items()))
        elif type(value) is list:
            pending += ((f"{path}.{index}", item) for index, item in reversed(list(enumerate(value))))
    return errors
