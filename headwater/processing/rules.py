"""Trigger rules: the definition clients send, its validation, and its compiled form.

A definition is validated and compiled once, when it is created or changed; an
invalid one is refused with the path of the bad node. The compiled form is what
the engine evaluates per event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from headwater.processing.conditions import ConditionError, Predicate, compile_conditions

TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ActionType = Literal["webhook", "recommend", "journey_enroll", "update_attribute", "award_badge", "award_points"]
JOURNEY_MODES = ("skip_if_active", "restart", "allow_multiple")
DEFAULT_TYPE_MAPPINGS: dict[str, list[str]] = {
    "purchase": ["outcome.recorded"],
    "cart_abandon": ["customer.updated"],
    "support_call": ["customer.updated"],
}

_DURATION = re.compile(r"^([1-9][0-9]{0,8})(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION_SECONDS = 366 * 86400
MAX_AWARD_POINTS = 1_000_000_000


class SumThreshold(msgspec.Struct, forbid_unknown_fields=True):
    field: str
    value: float


class Window(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    within: str
    count_at_least: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    sum_at_least: SumThreshold | None = None


class Action(msgspec.Struct, forbid_unknown_fields=True):
    type: ActionType
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class TriggerIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    """A trigger as clients write it."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    event_types: Annotated[list[TypeName], msgspec.Meta(min_length=1, max_length=50)]
    action: Action
    conditions: dict[str, Any] | None = None
    window: Window | None = None
    cooldown: str | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)] = 0
    enabled: bool = True


class RuleError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def parse_duration(value: str, path: str) -> int:
    """`30d`, `1h`, `15m`, `45s`, `2w` → microseconds."""
    match = _DURATION.match(value)
    if not match:
        raise RuleError(path, "a duration like 45s, 15m, 1h, 30d or 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise RuleError(path, "at most 366 days")
    return seconds * 1_000_000


def _require_str(config: dict[str, Any], name: str, path: str) -> str:
    value = config.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise RuleError(f"{path}.{name}", "required: a string of 1-256 characters")
    return value


def check_action(action: Action, path: str = "action") -> None:
    config = action.config
    if len(msgspec.json.encode(config)) > 16 * 1024:
        raise RuleError(f"{path}.config", "at most 16 KiB")
    if action.type == "webhook":
        _require_str(config, "endpoint_id", f"{path}.config")
    elif action.type == "journey_enroll":
        _require_str(config, "journeyId", f"{path}.config")
        if config.get("mode", "skip_if_active") not in JOURNEY_MODES:
            raise RuleError(f"{path}.config.mode", f"one of {', '.join(JOURNEY_MODES)}")
    elif action.type == "update_attribute":
        _require_str(config, "attribute", f"{path}.config")
        if ("value" in config) == ("value_from" in config):
            raise RuleError(f"{path}.config", "exactly one of value or value_from")
        if "value_from" in config:
            compile_conditions({"field": config["value_from"], "op": "exists"}, f"{path}.config.value_from")
    elif action.type in ("award_badge", "award_points"):
        _check_award(action.type, config, f"{path}.config")


def _check_award(type_: str, config: dict[str, Any], path: str) -> None:
    if type_ == "award_badge":
        _require_str(config, "badge", path)
        return
    points = config.get("points")
    if type(points) is float and points.is_integer():  # JSON has one kind of number: 5.0 is 5
        points = int(points)
    if type(points) is not int or not 1 <= abs(points) <= MAX_AWARD_POINTS:
        message = f"required: a whole number other than 0, at most {MAX_AWARD_POINTS:,} either way"
        raise RuleError(f"{path}.points", message)
    if "reason" in config:
        _require_str(config, "reason", path)


@dataclass(frozen=True)
class CompiledWindow:
    within_us: int
    threshold: float
    sum_field: tuple[str, ...] | None  # None: count events


@dataclass(frozen=True)
class CompiledTrigger:
    id: str
    name: str
    event_types: tuple[str, ...]
    matches: Predicate
    window: CompiledWindow | None
    cooldown_us: int | None
    priority: int
    enabled: bool
    action_type: str
    action_config: dict[str, Any]
    order: int  # creation order: the tie-break after priority


def compile_trigger(trigger_id: str, rule: TriggerIn, order: int = 0) -> CompiledTrigger:
    """Validate and compile; raises RuleError (or ConditionError) naming the bad node."""
    matches = compile_conditions(rule.conditions, "conditions")
    window = None
    if rule.window is not None:
        w = rule.window
        within = parse_duration(w.within, "window.within")
        if (w.count_at_least is None) == (w.sum_at_least is None):
            raise RuleError("window", "exactly one of count_at_least or sum_at_least")
        if w.sum_at_least is not None:
            path = tuple(w.sum_at_least.field.split("."))
            compile_conditions({"field": w.sum_at_least.field, "op": "exists"}, "window.sum_at_least")
            window = CompiledWindow(within, w.sum_at_least.value, path)
        else:
            window = CompiledWindow(within, float(w.count_at_least or 0), None)
    cooldown = None if rule.cooldown is None else parse_duration(rule.cooldown, "cooldown")
    check_action(rule.action)
    return CompiledTrigger(
        id=trigger_id,
        name=rule.name,
        event_types=tuple(dict.fromkeys(rule.event_types)),
        matches=matches,
        window=window,
        cooldown_us=cooldown,
        priority=rule.priority,
        enabled=rule.enabled,
        action_type=rule.action.type,
        action_config=rule.action.config,
        order=order,
    )


def rule_error_path(exc: RuleError | ConditionError) -> str:
    return exc.path


class TriggerSet:
    """One tenant-and-mode's enabled triggers, indexed by the event types they fire on.

    An event of a type nobody listens to costs one dict lookup; mapped types
    (`purchase` → `outcome.recorded`) are folded in once per event type and cached.
    """

    def __init__(self, triggers: list[CompiledTrigger], mappings: dict[str, list[str]]) -> None:
        self.mappings = mappings
        self._by_type: dict[str, list[CompiledTrigger]] = {}
        for trigger in triggers:
            if trigger.enabled:
                for type_ in trigger.event_types:
                    self._by_type.setdefault(type_, []).append(trigger)
        self._for_event: dict[str, tuple[CompiledTrigger, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_type)

    def for_event_type(self, event_type: str) -> tuple[CompiledTrigger, ...]:
        cached = self._for_event.get(event_type)
        if cached is not None:
            return cached
        seen: dict[str, CompiledTrigger] = {}
        for type_ in (event_type, *self.mappings.get(event_type, ())):
            for trigger in self._by_type.get(type_, ()):
                seen.setdefault(trigger.id, trigger)
        ordered = tuple(sorted(seen.values(), key=lambda t: (-t.priority, t.order)))
        if len(self._for_event) < 10_000:
            self._for_event[event_type] = ordered
        return ordered
