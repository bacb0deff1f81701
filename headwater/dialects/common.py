"""What the dialect modules share: reading an untrusted JSON body, and checking one object's
fields against a small spec that reports every problem (not just the first) in the dialect's
own error codes.

Limits on the canonical fields are the native API's: a type maps from at most 128
characters, a subject, source, channel or idempotency key from at most 256.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

import msgspec

from headwater.errors import ApiError
from headwater.events import EventDraft, FieldError, Rejection
from headwater.parsing import nesting_exceeds, parse_time

MAX_TYPE = 128
MAX_TEXT = 256
TIME_MESSAGE = "must be a valid ISO 8601 datetime"

Kind = Literal["string", "object", "strings", "time"]


class Codes(NamedTuple):
    """A dialect's error vocabulary. `title` is the `error` of every 400 it sends; when None,
    the error is the problem's own message (as the native API does)."""

    title: str | None = None
    required: str = "required"
    invalid_type: str = "invalid_type"
    too_long: str = "too_long"
    empty: str = "too_short"
    invalid_format: str = "invalid_format"
    invalid_value: str = "invalid_value"
    unknown_field: str = "unknown_field"
    invalid_json: str = "invalid_json"
    too_deep: str = "too_deep"
    invalid_utf8: str = "invalid_utf8"


NATIVE_CODES = Codes()


class Spec(NamedTuple):
    """One field of an object: its JSON kind, whether it must be there (a null counts as
    absent), and for strings a length range (in characters) or a set of allowed values."""

    name: str
    kind: Kind = "string"
    required: bool = False
    min_length: int = 0
    max_length: int | None = None
    choices: tuple[str, ...] = ()


@dataclass
class Checked:
    """The outcome of checking an object: `present` holds every known field with a non-null
    value, verbatim and in the client's order; `strings` and `times` the decoded good values."""

    present: dict[str, msgspec.Raw] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    times: dict[str, datetime] = field(default_factory=dict)
    errors: list[FieldError] = field(default_factory=list)


_object = msgspec.json.Decoder(dict[str, msgspec.Raw])
_array = msgspec.json.Decoder(list[msgspec.Raw])
_string = msgspec.json.Decoder(str)
_JSON_TYPES = {b'"': "string", b"{": "object", b"[": "array", b"t": "boolean", b"f": "boolean", b"n": "null"}
_ARTICLES = {"string": "a string", "object": "an object", "strings": "an array of strings", "time": "a string"}


def json_type(raw: bytes) -> str:
    return _JSON_TYPES.get(raw[:1], "number")


def body_error(codes: Codes, code: str, message: str, field: str = "", status: int = 400) -> ApiError:
    return ApiError(status, codes.title or message, [FieldError(field, code, message)])


def read_object(body: bytes, max_depth: int, codes: Codes) -> dict[str, msgspec.Raw]:
    """A request body that must be one JSON object; anything else is a 400 in `codes`."""
    if not body.strip():
        raise body_error(codes, codes.required, "request body is empty: send a JSON object")
    if nesting_exceeds(body, max_depth):
        raise body_error(codes, codes.too_deep, f"JSON nests deeper than {max_depth} levels")
    if not body.isascii():
        # msgspec does not check the UTF-8 inside Raw values, so check the whole body once.
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            message = f"request body is not valid UTF-8: {exc.reason} at byte {exc.start}"
            raise body_error(codes, codes.invalid_utf8, message) from None
    try:
        return _object.decode(body)
    except msgspec.ValidationError:
        raise body_error(codes, codes.invalid_type, "request body must be a JSON object") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise body_error(codes, codes.invalid_json, f"request body is not valid JSON: {exc}") from None


def read_batch(body: dict[str, msgspec.Raw], name: str, max_items: int, codes: Codes) -> list[msgspec.Raw]:
    """`body[name]`, the only field of a batch body: an array of 1 to `max_items` items."""
    for extra in body:
        if extra != name:
            raise body_error(codes, codes.unknown_field, f"unknown field {extra!r} in a batch body", extra)
    raw = body.get(name)
    if raw is None or bytes(raw) == b"null":
        raise body_error(codes, codes.required, f"{name} is required", name)
    try:
        items = _array.decode(raw)
    except msgspec.ValidationError:
        raise body_error(codes, codes.invalid_type, f"{name} must be an array of objects", name) from None
    if not items:
        raise body_error(codes, codes.empty, f"{name} must not be empty", name)
    if len(items) > max_items:
        message = f"a request may carry at most {max_items} events; this one has {len(items)}"
        raise ApiError(413, message, [FieldError(name, "too_many", f"at most {max_items} events per request")])
    return items


def read_item(raw: bytes, specs: Sequence[Spec], codes: Codes) -> Checked | Rejection:
    """One item of a request (or a quarantined one being replayed), checked against `specs`."""
    try:
        fields = _object.decode(raw)
    except msgspec.ValidationError:
        message = f"must be an object, got {json_type(raw.lstrip())}"
        return Rejection([FieldError("", codes.invalid_type, message)], raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return Rejection([FieldError("", codes.invalid_json, f"not valid JSON: {exc}")], raw)
    checked = check_fields(fields, specs, codes)
    return Rejection(checked.errors, raw) if checked.errors else checked


def check_fields(fields: dict[str, msgspec.Raw], specs: Sequence[Spec], codes: Codes) -> Checked:
    """Every problem with `fields`, in spec order, then unknown fields in the client's order."""
    checked = Checked()
    known = {spec.name for spec in specs}
    for spec in specs:
        raw = fields.get(spec.name)
        if raw is None or bytes(raw) == b"null":
            if spec.required:
                checked.errors.append(FieldError(spec.name, codes.required, "is required"))
            continue
        problems = list(_check(spec, bytes(raw), codes, checked))
        if problems:
            checked.errors += problems
        else:
            checked.present[spec.name] = raw
    checked.present = {name: raw for name, raw in fields.items() if name in checked.present}
    checked.errors += [FieldError(name, codes.unknown_field, "unknown field") for name in fields if name not in known]
    return checked


def _check(spec: Spec, raw: bytes, codes: Codes, checked: Checked) -> Iterable[FieldError]:
    got = json_type(raw)
    wanted = "array" if spec.kind == "strings" else "object" if spec.kind == "object" else "string"
    if got != wanted:
        yield FieldError(spec.name, codes.invalid_type, f"must be {_ARTICLES[spec.kind]}, got {got}")
        return
    if spec.kind == "object":
        return
    if spec.kind == "strings":
        for index, item in enumerate(_array.decode(raw)):
            if (item_type := json_type(bytes(item))) != "string":
                yield FieldError(f"{spec.name}.{index}", codes.invalid_type, f"must be a string, got {item_type}")
        return
    try:
        value = _string.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        yield FieldError(spec.name, codes.invalid_utf8, "must be valid UTF-8")
        return
    if spec.kind == "time":
        try:
            checked.times[spec.name] = parse_time(value)
        except ValueError:
            yield FieldError(spec.name, codes.invalid_format, TIME_MESSAGE)
        return
    if len(value) < spec.min_length:
        yield FieldError(spec.name, codes.empty, "must not be empty")
    elif spec.max_length is not None and len(value) > spec.max_length:
        yield FieldError(spec.name, codes.too_long, f"must be at most {spec.max_length} characters")
    elif spec.choices and value not in spec.choices:
        yield FieldError(spec.name, codes.invalid_value, f"must be one of {', '.join(spec.choices)}")
    else:
        checked.strings[spec.name] = value


def encode_object(fields: dict[str, msgspec.Raw]) -> msgspec.Raw:
    """A JSON object of verbatim values, for a dialect whose `data` is "every other field"."""
    return msgspec.Raw(msgspec.json.encode(fields))


def data_as(item: EventDraft | Rejection, errors: list[FieldError], name: str) -> list[FieldError]:
    """The errors of an item's result in the dialect's own field names. A rejection's already
    are; the pipeline's (a schema's problems, an out-of-range number) name the canonical `data`,
    which the dialect calls `name` (`""` when its `data` is the body's other fields)."""
    if isinstance(item, Rejection):
        return errors
    renamed = []
    for error in errors:
        if error.field == "data" or error.field.startswith("data."):
            rest = error.field[5:]
            error = FieldError(f"{name}.{rest}" if name and rest else name or rest, error.code, error.message)
        renamed.append(error)
    return renamed
