"""The OpenAPI documentation of the gamification routes, merged into `headwater.operations.DOCS`
(`docs()`), and what their Structs cannot say (`refine`, called from `operations.refine`):
exactly one metric, a whole target unless summing, streaks over all time, the time zones."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from headwater.api import gamification as g
from headwater.openapi import AUTH_ERRORS, BODY_ERRORS, Body, Doc, Param
from headwater.processing.gamification import (
    FACT_TYPE_PATTERN,
    FIELD_PATTERN,
    KEY_PATTERN,
    MAX_LEVELS,
    PERIOD_PATTERN,
    BadgeIn,
    BadgePatch,
    ChallengeIn,
    Metric,
    Reward,
    Target,
    available_timezones,
)
from headwater.storage.registry import GamificationSettings

TAGS = ("gamification",)
READ = AUTH_ERRORS
WRITE = (*BODY_ERRORS, *AUTH_ERRORS)
Bound = Annotated[
    str,
    msgspec.Meta(max_length=64, extra_json_schema={"anyOf": [{"format": "date"}, {"format": "date-time"}]}),
]
AT = Param("at", Bound, description="The instant whose period (in the tenant's time zone) is answered; default now.")
BOARD_LIMIT = Param("limit", Annotated[int, msgspec.Meta(ge=1, le=1000)], description="1-1000 (default 10).")
PAGE_LIMIT = Param("limit", Annotated[int, msgspec.Meta(ge=1, le=1000)], description="Page size, 1-1000 (default 100).")


class ChallengePatch(msgspec.Struct, forbid_unknown_fields=True):
    """Any fields of a challenge: merged into its definition, which is then validated whole."""

    name: str | UnsetType = UNSET
    fact_type: str | UnsetType = UNSET
    metric: Metric | UnsetType = UNSET
    target: Target | UnsetType = UNSET
    period: str | UnsetType = UNSET
    conditions: dict[str, Any] | UnsetType | None = UNSET
    starts_at: datetime | UnsetType | None = UNSET
    ends_at: datetime | UnsetType | None = UNSET
    repeatable: bool | UnsetType = UNSET
    reward: Reward | UnsetType | None = UNSET


FIELD = {
    "type": "string",
    "pattern": FIELD_PATTERN,
    "description": "A path into data (`data.amount`) or subject, source, channel, type.",
}
METRIC = {
    "type": "object",
    "description": "Exactly one of count (true), sum, distinct (a field) or streak (a period unit).",
    "oneOf": [
        {"properties": {"count": {"const": True}}, "required": ["count"], "additionalProperties": False},
        {"properties": {"sum": FIELD}, "required": ["sum"], "additionalProperties": False},
        {"properties": {"distinct": FIELD}, "required": ["distinct"], "additionalProperties": False},
        {
            "properties": {"streak": {"enum": ["daily", "weekly", "monthly"]}},
            "required": ["streak"],
            "additionalProperties": False,
        },
    ],
}
REWARD = {
    "type": "object",
    "properties": {
        "badge": {"type": "string", "pattern": KEY_PATTERN},
        "points": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
    },
    "minProperties": 1,
    "additionalProperties": False,
}
_HAS = {"required": ["metric"], "properties": {"metric": {"required": ["streak"]}}}
_SUMS = {"required": ["metric"], "properties": {"metric": {"required": ["sum"]}}}
CROSS_FIELD = [
    # A streak counts consecutive periods itself: over all time.
    {"if": _HAS, "then": {"properties": {"period": {"const": "all_time"}}}},
    # Counts, distinct values and streaks reach whole targets.
    {"if": {"not": _SUMS}, "then": {"properties": {"target": {"type": "integer"}}}},
]


def refine(components: dict[str, Any]) -> None:
    condition = {"anyOf": [{"$ref": "#/components/schemas/Condition"}, {"type": "null"}]}
    challenge = components["ChallengeIn"]
    props = challenge["properties"]
    props["fact_type"] = {"type": "string", "maxLength": 160, "pattern": FACT_TYPE_PATTERN}
    props["period"] = {"type": "string", "pattern": PERIOD_PATTERN, "default": "all_time"}
    props["metric"] = METRIC
    props["conditions"] = condition
    props["reward"] = {"anyOf": [REWARD, {"type": "null"}]}
    for name in ("starts_at", "ends_at"):
        props[name] = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}], "default": None}
    challenge["allOf"] = CROSS_FIELD
    patch = components["ChallengePatch"]
    patch["properties"] = dict(props)
    patch["allOf"] = CROSS_FIELD
    settings = components["GamificationSettings"]["properties"]
    settings["timezone"] = {"enum": sorted(available_timezones()), "default": "UTC"}
    settings["levels"] = {
        "type": "array",
        "maxItems": MAX_LEVELS,
        "items": {"type": "integer", "minimum": 0},
        "description": "Point thresholds; kept in ascending order, repeats dropped.",
    }


def docs() -> dict[tuple[str, str], Doc]:
    return {
        ("POST", "/v1/badges"): Doc(
            "Create a badge", TAGS, {201: g.BadgeOut}, body=(Body(BadgeIn),), errors=(*WRITE, 409)
        ),
        ("GET", "/v1/badges"): Doc("The badges", TAGS, {200: g.BadgeList}, errors=READ),
        ("GET", "/v1/badges/{key}"): Doc("One badge", TAGS, {200: g.BadgeOut}, errors=(404, *READ)),
        ("PATCH", "/v1/badges/{key}"): Doc(
            "Change a badge", TAGS, {200: g.BadgeOut}, body=(Body(BadgePatch),), errors=(*WRITE, 404)
        ),
        ("DELETE", "/v1/badges/{key}"): Doc(
            "Delete a badge",
            TAGS,
            {200: g.BadgeOut},
            description="A badge a challenge rewards cannot be deleted (409).",
            errors=(404, 409, *READ),
        ),
        ("POST", "/v1/challenges"): Doc(
            "Create a challenge",
            TAGS,
            {201: g.ChallengeOut},
            description="An invalid definition is refused with 400, naming the field and the reason; a reward "
            "badge that does not exist with 409.",
            body=(Body(ChallengeIn),),
            errors=(*WRITE, 409),
        ),
        ("GET", "/v1/challenges"): Doc("The challenges", TAGS, {200: g.ChallengeList}, errors=READ),
        ("GET", "/v1/challenges/{challenge_id}"): Doc(
            "One challenge", TAGS, {200: g.ChallengeOut}, errors=(404, *READ)
        ),
        ("PATCH", "/v1/challenges/{challenge_id}"): Doc(
            "Change a challenge",
            TAGS,
            {200: g.ChallengeOut},
            description="The changes are merged into the definition, which is validated whole.",
            body=(Body(ChallengePatch),),
            errors=(*WRITE, 404, 409),
        ),
        ("DELETE", "/v1/challenges/{challenge_id}"): Doc(
            "Delete a challenge", TAGS, {200: g.ChallengeOut}, errors=(404, *READ)
        ),
        ("GET", "/v1/challenges/{challenge_id}/leaderboard"): Doc(
            "A challenge's leaderboard",
            TAGS,
            {200: g.ChallengeBoard},
            description="Most progress first; ties: who reached it first (event time), then participant id.",
            params=(BOARD_LIMIT, AT),
            errors=(400, 404, *READ),
        ),
        ("GET", "/v1/settings"): Doc("The gamification settings", TAGS, {200: GamificationSettings}, errors=READ),
        ("PUT", "/v1/settings"): Doc(
            "Replace the gamification settings",
            TAGS,
            {200: GamificationSettings},
            description="`timezone`: an IANA time zone; `levels`: ascending point thresholds.",
            body=(Body(GamificationSettings),),
            errors=WRITE,
        ),
        ("GET", "/v1/participants/{participant_id}"): Doc(
            "A participant: points, level, badges and challenges",
            TAGS,
            {200: g.ParticipantOut},
            params=(AT,),
            errors=(400, 404, *READ),
        ),
        ("GET", "/v1/leaderboards/points"): Doc(
            "The points leaderboard",
            TAGS,
            {200: g.PointsBoard},
            description="Most points first; ties: who reached them first (event time), then participant id.",
            params=(
                Param("period", Annotated[str, msgspec.Meta(pattern="^(all_time|daily|weekly|monthly)$")]),
                BOARD_LIMIT,
                AT,
            ),
            errors=(400, *READ),
        ),
        ("GET", "/v1/facts"): Doc(
            "Facts, newest first",
            TAGS,
            {200: g.FactPage},
            params=(
                Param("participant", description="Only this participant's facts."),
                Param("fact_type", description="Only facts of this type, e.g. custom.purchase."),
                Param("from", Bound, description="Occurred at or after."),
                Param("to", Bound, description="Occurred before (a date: by the end of that day)."),
                PAGE_LIMIT,
                Param(
                    "cursor",
                    Annotated[str, msgspec.Meta(pattern=g.FACT_CURSOR_PATTERN)],
                    description="`next_cursor` of the previous page.",
                ),
            ),
            errors=(400, *READ),
        ),
    }
