"""Gamification definitions: badges, challenges and tenant settings; their validation,
their compiled form, and the periods progress is kept in.

A challenge counts facts of one `fact_type` that match its `conditions`, with a `metric`
(`count`, `sum` of a field, `distinct` values of a field, or a `streak` of consecutive
periods with a fact) over a `period`, and completes when the metric reaches `target`.

Periods are calendar periods in the tenant's time zone, computed from the fact's own time
(the event's `time`), never from the clock: a late event lands in the period it belongs to,
and replaying the log gives the same buckets. A bucket is an integer:

| period | bucket |
|---|---|
| `all_time` | 0 |
| `daily`, `rolling:<N>d` | the local date's proleptic ordinal (`date.toordinal()`) |
| `weekly` | `(ordinal - 1) // 7`: weeks start on Monday (ordinal 1 is a Monday) |
| `monthly` | `year * 12 + month - 1` |

`rolling:<N>d` keeps daily buckets; its value at a day is the total over that day and the
N-1 days before it.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from headwater.clock import to_us
from headwater.events import Mode
from headwater.processing.conditions import Accessor, ConditionError, Predicate, _accessor, compile_conditions
from headwater.storage.records import AWARD_TYPES
from headwater.storage.registry import GamificationSettings

Scope = tuple[str, Mode]
PeriodKind = Literal["all_time", "daily", "weekly", "monthly", "rolling"]
CALENDAR = ("daily", "weekly", "monthly")
MAX_ROLLING_DAYS = 366
MAX_LEVELS = 100
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=2000)]
Url = Annotated[str, msgspec.Meta(max_length=2048, pattern=r"^https?://")]
BadgeKey = Annotated[str, msgspec.Meta(pattern=KEY_PATTERN)]
Target = Annotated[int, msgspec.Meta(ge=1, le=10**12)] | Annotated[float, msgspec.Meta(gt=0, le=1e12)]
FACT_TYPE_PATTERN = r"^(custom\..+|challenge\.completed|badge\.awarded|points\.awarded)$"
# rolling:1d .. rolling:366d
PERIOD_PATTERN = r"^(all_time|daily|weekly|monthly|rolling:([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])d)$"
# What a sum or distinct metric reads: a path into data, or an envelope field.
FIELD_PATTERN = r"^(data(\.[^.]+){1,31}|subject|source|channel|type)$"
FieldPath = Annotated[str, msgspec.Meta(pattern=FIELD_PATTERN)]


class DefinitionError(ValueError):
    """An invalid definition; `path` names the bad field, e.g. `metric.sum`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# Definitions as clients write them.


class BadgeIn(msgspec.Struct, forbid_unknown_fields=True):
    key: BadgeKey
    name: Name
    description: Text | None = None
    image_url: Url | None = None


class BadgePatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name | None = None
    description: Text | None = None
    image_url: Url | None = None


class Metric(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of: `{"count": true}`, `{"sum": field}`, `{"distinct": field}`, `{"streak": unit}`."""

    count: bool | UnsetType = UNSET
    sum: FieldPath | UnsetType = UNSET
    distinct: FieldPath | UnsetType = UNSET
    streak: Literal["daily", "weekly", "monthly"] | UnsetType = UNSET


class Reward(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    badge: BadgeKey | UnsetType = UNSET
    points: Annotated[int, msgspec.Meta(ge=1, le=10**9)] | UnsetType = UNSET


class ChallengeIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    name: Name
    fact_type: Annotated[str, msgspec.Meta(max_length=160, pattern=FACT_TYPE_PATTERN)]
    metric: Metric
    target: Target
    period: Annotated[str, msgspec.Meta(pattern=PERIOD_PATTERN)] = "all_time"
    conditions: dict[str, Any] | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    repeatable: bool = False
    reward: Reward | None = None


# Periods.


@dataclass(frozen=True)
class Period:
    kind: PeriodKind
    days: int = 0  # rolling only

    def bucket(self, day: date) -> int:
        return bucket_of(self.kind, day)

    def label(self, bucket: int) -> str:
        return bucket_label(self.kind, bucket)


def parse_period(text: str, path: str = "period") -> Period:
    if text in ("all_time", *CALENDAR):
        return Period(text)  # type: ignore[arg-type]
    if text.startswith("rolling:") and text.endswith("d") and text[8:-1].isdigit():
        days = int(text[8:-1])
        if 1 <= days <= MAX_ROLLING_DAYS:
            return Period("rolling", days)
        raise DefinitionError(path, f"a rolling period is 1-{MAX_ROLLING_DAYS} days")
    raise DefinitionError(path, "one of all_time, daily, weekly, monthly or rolling:<N>d")


def bucket_of(kind: str, day: date) -> int:
    if kind == "all_time":
        return 0
    if kind == "monthly":
        return day.year * 12 + day.month - 1
    ordinal = day.toordinal()
    if kind == "weekly":
        return (ordinal - 1) // 7
    return ordinal  # daily, rolling


def bucket_label(kind: str, bucket: int) -> str:
    """`2026-04-10`, `2026-W15` (ISO week), `2026-04`, or `all_time`."""
    if kind == "all_time":
        return "all_time"
    if kind == "monthly":
        return f"{bucket // 12:04d}-{bucket % 12 + 1:02d}"
    if kind == "weekly":
        year, week, _ = date.fromordinal(bucket * 7 + 1).isocalendar()
        return f"{year:04d}-W{week:02d}"
    return date.fromordinal(bucket).isoformat()


@functools.cache
def available_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


@functools.cache
def timezone(name: str) -> zoneinfo.ZoneInfo | None:
    """None for UTC: event times are already UTC, so no conversion is needed."""
    return None if name in ("UTC", "Etc/UTC") else zoneinfo.ZoneInfo(name)


def local_day(at: datetime, tz: zoneinfo.ZoneInfo | None) -> date:
    """The date of `at` in the time zone; at the very ends of the calendar, where the local
    date would fall outside it, the UTC date."""
    utc = at.astimezone(UTC)
    if tz is None:
        return utc.date()
    try:
        return utc.astimezone(tz).date()
    except OverflowError:
        return utc.date()


def level_for(points: int, levels: list[int]) -> int | None:
    """How many thresholds `points` reaches; None when the tenant has no levels."""
    if not levels:
        return None
    return sum(1 for threshold in levels if points >= threshold)


def checked_settings(settings: GamificationSettings) -> GamificationSettings:
    """Valid settings, with the level thresholds in ascending order (repeats dropped)."""
    if settings.timezone not in available_timezones():
        raise DefinitionError("timezone", "an IANA time zone such as UTC or Europe/Berlin")
    levels = settings.levels
    if len(levels) > MAX_LEVELS:
        raise DefinitionError("levels", f"at most {MAX_LEVELS} levels")
    if any(v < 0 for v in levels):
        raise DefinitionError("levels", "point thresholds of 0 or more")
    return msgspec.structs.replace(settings, levels=sorted(set(levels)))


# Challenges, compiled.


@dataclass(frozen=True, slots=True)
class CompiledChallenge:
    id: str
    name: str
    fact_type: str
    matches: Predicate
    metric: Literal["count", "sum", "distinct", "streak"]
    field: Accessor | None  # sum and distinct: reads the field from an EventView
    streak_unit: str | None  # streak: daily | weekly | monthly
    target: float
    period: Period
    starts_us: int | None
    ends_us: int | None
    repeatable: bool
    reward_badge: str | None
    reward_points: int | None
    order: int


def _utc(value: datetime | None, path: str = "") -> datetime | None:
    """A client's time in UTC; no offset means UTC. `0001-01-01T00:00:00+01:00` is a valid
    timestamp whose UTC time is before year 1: a DefinitionError, not an OverflowError."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise DefinitionError(path, "out of range: in UTC it falls before year 1 or after year 9999") from None


def normalized(rule: ChallengeIn) -> ChallengeIn:
    """The definition as stored: times in UTC."""
    return msgspec.structs.replace(rule, starts_at=_utc(rule.starts_at), ends_at=_utc(rule.ends_at))


def _field(value: str, path: str) -> Accessor:
    if not value.startswith("data.") and value not in ("subject", "source", "channel", "type"):
        raise DefinitionError(path, "a field such as data.amount")
    try:
        compile_conditions({"field": value, "op": "exists"}, path)
    except ConditionError as exc:
        raise DefinitionError(path, exc.message) from None
    return _accessor(tuple(value.split(".")))


def compile_challenge(challenge_id: str, rule: ChallengeIn, order: int = 0) -> CompiledChallenge:
    """Validate and compile; raises DefinitionError (or ConditionError) naming the bad field.
    Whether `reward.badge` names a badge is the caller's to check (it needs the store)."""
    if not (rule.fact_type.startswith("custom.") and len(rule.fact_type) > 7) and rule.fact_type not in AWARD_TYPES:
        raise DefinitionError("fact_type", f"custom.<event type>, or one of {', '.join(AWARD_TYPES)}")
    m = rule.metric
    given = [name for name in ("count", "sum", "distinct", "streak") if getattr(m, name) is not UNSET]
    if len(given) != 1:
        raise DefinitionError("metric", "exactly one of count, sum, distinct or streak")
    metric = given[0]
    field = None
    streak_unit = None
    if metric == "count" and m.count is not True:
        raise DefinitionError("metric.count", "must be true")
    if metric == "sum":
        field = _field(str(m.sum), "metric.sum")
    if metric == "distinct":
        field = _field(str(m.distinct), "metric.distinct")
    period = parse_period(rule.period)
    if metric == "streak":
        streak_unit = str(m.streak)
        if period.kind != "all_time":
            raise DefinitionError("period", "a streak counts consecutive periods itself: use all_time")
    if metric != "sum" and not float(rule.target).is_integer():
        raise DefinitionError("target", f"a whole number for {metric}")
    # An `ends_at` at or before `starts_at` is an empty window: nothing counts.
    starts, ends = _utc(rule.starts_at, "starts_at"), _utc(rule.ends_at, "ends_at")
    reward = rule.reward
    if reward is not None and reward.badge is UNSET and reward.points is UNSET:
        raise DefinitionError("reward", "a badge, points or both")
    return CompiledChallenge(
        id=challenge_id,
        name=rule.name,
        fact_type=rule.fact_type,
        matches=compile_conditions(rule.conditions, "conditions"),
        metric=metric,  # type: ignore[arg-type]
        field=field,
        streak_unit=streak_unit,
        target=float(rule.target),
        period=period,
        starts_us=None if starts is None else to_us(starts),
        ends_us=None if ends is None else to_us(ends),
        repeatable=rule.repeatable,
        reward_badge=None if reward is None or reward.badge is UNSET else reward.badge,
        reward_points=None if reward is None or reward.points is UNSET else reward.points,
        order=order,
    )


class ChallengeSet:
    """One tenant-and-mode's challenges indexed by fact type, with its settings: a fact
    costs one dict lookup plus the challenges on its own type."""

    def __init__(self, challenges: Iterable[CompiledChallenge], settings: GamificationSettings) -> None:
        self.settings = settings
        self.tz = timezone(settings.timezone)
        self._by_type: dict[str, tuple[CompiledChallenge, ...]] = {}
        grouped: dict[str, list[CompiledChallenge]] = {}
        for challenge in challenges:
            grouped.setdefault(challenge.fact_type, []).append(challenge)
        for fact_type, items in grouped.items():
            self._by_type[fact_type] = tuple(sorted(items, key=lambda c: c.order))

    def __bool__(self) -> bool:
        return bool(self._by_type)

    def for_fact_type(self, fact_type: str) -> tuple[CompiledChallenge, ...]:
        return self._by_type.get(fact_type, ())


def plain(value: float) -> int | float:
    """A whole float as an int, for JSON: progress 3, not 3.0."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value
