"""Trigger and challenge conditions: a data-only tree compiled once into closures.

A tree is `{"all": [...]}`, `{"any": [...]}`, `{"not": node}` or a leaf
`{"field": "data.amount", "op": "gt", "value": 100}`. Nothing is ever evaluated as
code; `matches` runs on a linear-time regex engine, so no pattern can backtrack.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import msgspec

from headwater.events import Event
from headwater.parsing import decode_data, is_number

MAX_DEPTH = 16
MAX_NODES = 256
MAX_PATTERN_LENGTH = 512
MAX_LIST_VALUES = 1000
EVENT_FIELDS = ("type", "subject", "source", "channel", "time")

_MISSING = object()
_PATTERNS = jsonschema_rs.RegexOptions(size_limit=256 * 1024, dfa_size_limit=1024 * 1024)


class ConditionError(ValueError):
    """A malformed condition; `path` names the bad node, e.g. `conditions.all.1.op`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class EventView:
    """An event as conditions see it: envelope fields plus `data`, decoded once.

    Built only for events that have candidate rules, so the decode is paid where needed.
    A number out of the 64-bit range (in an event stored before ingest refused them) is a
    `Decimal`: no comparison or metric takes it for a number.
    """

    __slots__ = ("data", "event")
    MISSING = _MISSING  # what `get` returns for an absent field

    def __init__(self, event: Event) -> None:
        self.event = event
        self.data: Any = decode_data(event.data)

    def get(self, path: tuple[str, ...]) -> Any:
        return _accessor(path)(self)


Predicate = Callable[[EventView], bool]
Accessor = Callable[[EventView], Any]


def _walk(node: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if type(node) is dict:
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif type(node) is list and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _accessor(path: tuple[str, ...]) -> Accessor:
    """A closure reading one field; the common shapes get a closure with no loop."""
    head = path[0]
    if head == "time":
        return lambda e: e.event.time.isoformat().replace("+00:00", "Z")
    if head != "data":

        def envelope(e: EventView) -> Any:
            value = getattr(e.event, head)
            return _MISSING if value is None else value

        return envelope
    rest = path[1:]
    if len(rest) == 1:
        key = rest[0]
        return lambda e: e.data.get(key, _MISSING) if type(e.data) is dict else _MISSING
    return lambda e: _walk(e.data, rest)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, though `1` is `1.0`."""
    return bool(a == b) and (type(a) is bool) == (type(b) is bool)


def _regex(pattern: str, path: str) -> Callable[[str], bool]:
    # jsonschema-rs's `pattern` runs on Rust's regex crate: linear time whatever the pattern,
    # which Python's backtracking `re` cannot promise for patterns that tenants write.
    try:
        matcher: Any = jsonschema_rs.Draft202012Validator(
            {"type": "string", "pattern": pattern}, pattern_options=_PATTERNS, offline=True
        )
    except (jsonschema_rs.ValidationError, ValueError):
        raise ConditionError(path, "not a supported regular expression") from None
    is_valid: Callable[[str], bool] = matcher.is_valid
    return is_valid


Test = Callable[[Any], bool]


def _scalar(value: Any, path: str, op: str) -> None:
    if isinstance(value, dict | list):
        raise ConditionError(f"{path}.value", f"{op} takes a scalar value")


def _eq(value: Any, path: str) -> Test:
    _scalar(value, path, "eq")
    return lambda v: _same(v, value)


def _neq(value: Any, path: str) -> Test:
    _scalar(value, path, "neq")
    return lambda v: not _same(v, value)


def _ordering(compare: Callable[[Any, Any], bool], op: str) -> Callable[[Any, str], Test]:
    def build(value: Any, path: str) -> Test:
        if isinstance(value, str):
            return lambda v: type(v) is str and compare(v, value)
        if not is_number(value):
            raise ConditionError(f"{path}.value", f"{op} needs a number or a string")
        # `type(...) is`, not isinstance: `true` is not a number here.
        return lambda v: (type(v) is int or type(v) is float) and compare(v, value)

    return build


def _members(value: Any, path: str, op: str) -> frozenset[tuple[bool, Any]]:
    if not isinstance(value, list) or len(value) > MAX_LIST_VALUES:
        raise ConditionError(f"{path}.value", f"{op} needs a list of at most {MAX_LIST_VALUES} values")
    for item in value:
        _scalar(item, path, op)
    # Tagged with bool-ness so that `true` and `1` stay different members.
    return frozenset((type(v) is bool, v) for v in value)


def _in(value: Any, path: str) -> Test:
    members = _members(value, path, "in")
    return lambda v: not isinstance(v, dict | list) and (type(v) is bool, v) in members


def _nin(value: Any, path: str) -> Test:
    members = _members(value, path, "nin")
    return lambda v: isinstance(v, dict | list) or (type(v) is bool, v) not in members


def _exists(value: Any, path: str) -> Test:
    return lambda v: True


def _contains(value: Any, path: str) -> Test:
    _scalar(value, path, "contains")
    return lambda v: (
        (isinstance(v, str) and isinstance(value, str) and value in v)
        or (isinstance(v, list) and any(_same(item, value) for item in v))
    )


def _starts_with(value: Any, path: str) -> Test:
    if not isinstance(value, str):
        raise ConditionError(f"{path}.value", "starts_with needs a string")
    return lambda v: isinstance(v, str) and v.startswith(value)


def _matches(value: Any, path: str) -> Test:
    if not isinstance(value, str) or len(value) > MAX_PATTERN_LENGTH:
        raise ConditionError(f"{path}.value", f"matches needs a pattern of at most {MAX_PATTERN_LENGTH} characters")
    matcher = _regex(value, f"{path}.value")
    return lambda v: isinstance(v, str) and matcher(v)


_BUILDERS: dict[str, Callable[[Any, str], Test]] = {
    "eq": _eq,
    "neq": _neq,
    "gt": _ordering(operator.gt, "gt"),
    "gte": _ordering(operator.ge, "gte"),
    "lt": _ordering(operator.lt, "lt"),
    "lte": _ordering(operator.le, "lte"),
    "in": _in,
    "nin": _nin,
    "exists": _exists,
    "contains": _contains,
    "starts_with": _starts_with,
    "matches": _matches,
}


OPERATORS = tuple(_BUILDERS)


def _field_path(field: Any, path: str) -> tuple[str, ...]:
    if not isinstance(field, str) or not field:
        raise ConditionError(f"{path}.field", "field must be a non-empty string")
    parts = tuple(field.split("."))
    if parts[0] == "data":
        if any(not p for p in parts) or len(parts) > 32:
            raise ConditionError(f"{path}.field", f"bad data path {field!r}")
        return parts
    if len(parts) != 1 or parts[0] not in EVENT_FIELDS:
        raise ConditionError(f"{path}.field", f"unknown field {field!r}: use {', '.join(EVENT_FIELDS)} or data.<path>")
    return parts


# Two children is the common case; a closure that calls both directly avoids a generator.
def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda e: first(e) and second(e)
    return lambda e: all(p(e) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda e: first(e) or second(e)
    if len(parts) == 3:
        one, two, three = parts
        return lambda e: one(e) or two(e) or three(e)
    return lambda e: any(p(e) for p in parts)


class _Compiler:
    def __init__(self) -> None:
        self.nodes = 0

    def compile(self, node: Any, path: str, depth: int) -> Predicate:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConditionError(path, f"a condition tree may have at most {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise ConditionError(path, f"conditions nest at most {MAX_DEPTH} deep")
        if not isinstance(node, dict):
            raise ConditionError(path, "a condition is an object")
        if "all" in node or "any" in node:
            key = "all" if "all" in node else "any"
            if set(node) != {key}:
                raise ConditionError(path, f"{key!r} stands alone in its object")
            children = node[key]
            if not isinstance(children, list) or not children:
                raise ConditionError(f"{path}.{key}", "a non-empty list of conditions")
            compiled = [self.compile(child, f"{path}.{key}.{i}", depth + 1) for i, child in enumerate(children)]
            return _all(compiled) if key == "all" else _any(compiled)
        if "not" in node:
            if set(node) != {"not"}:
                raise ConditionError(path, "'not' stands alone in its object")
            inner = self.compile(node["not"], f"{path}.not", depth + 1)
            return lambda e: not inner(e)
        return self.leaf(node, path)

    def leaf(self, node: dict[str, Any], path: str) -> Predicate:
        unknown = set(node) - {"field", "op", "value"}
        if unknown:
            raise ConditionError(f"{path}.{sorted(unknown)[0]}", "unknown key in a condition")
        if "field" not in node:
            raise ConditionError(f"{path}.field", "required")
        op = node.get("op")
        if op not in OPERATORS:
            raise ConditionError(f"{path}.op", f"op must be one of {', '.join(OPERATORS)}")
        if op == "exists":
            if "value" in node and not isinstance(node["value"], bool):
                raise ConditionError(f"{path}.value", "exists takes true or false")
        elif "value" not in node:
            raise ConditionError(f"{path}.value", "required")
        get = _accessor(_field_path(node["field"], path))
        if op == "exists":
            if node.get("value") is False:
                return lambda e: get(e) is _MISSING
            return lambda e: get(e) is not _MISSING
        test = _BUILDERS[op](node.get("value"), path)
        if op == "nin" or op == "neq":
            # An absent field is "not in" any list and "not equal" to any value.
            return lambda e: (v := get(e)) is _MISSING or test(v)
        return lambda e: (v := get(e)) is not _MISSING and test(v)


def compile_conditions(tree: Any, path: str = "conditions") -> Predicate:
    """Compile a condition tree; `None` (no conditions) always matches."""
    if tree is None:
        return lambda e: True
    return _Compiler().compile(tree, path, 1)


def explain(tree: Any, view: EventView, path: str = "conditions") -> list[str]:
    """Why `tree` does not match `view`: the paths of the failing leaves (empty when it matches).

    Evaluates subtree by subtree with the same compiled leaves, so it agrees with
    `compile_conditions`; only used for dry runs, never on the ingest path.
    """
    if tree is None or compile_conditions(tree, path)(view):
        return []
    if "all" in tree:
        return [r for i, child in enumerate(tree["all"]) for r in explain(child, view, f"{path}.all.{i}")]
    if "any" in tree:
        reasons = [r for i, child in enumerate(tree["any"]) for r in explain(child, view, f"{path}.any.{i}")]
        return [f"{path}.any: none of the alternatives matched", *reasons]
    if "not" in tree:
        return [f"{path}.not: the inner condition matched"]
    actual = view.get(_field_path(tree["field"], path))
    shown = "absent" if actual is _MISSING else msgspec.json.encode(actual).decode()[:200]
    expected = msgspec.json.encode(tree.get("value")).decode()[:200] if "value" in tree else ""
    return [f"{path}: {tree['field']} {tree['op']} {expected} is false (value: {shown})".replace("  ", " ")]
