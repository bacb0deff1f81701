"""The OpenAPI documentation of the gamification routes, merged into `headwater.operations.DOCS`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from headwater.api import gamification as g
from headwater.openapi import AUTH_ERRORS, BODY_ERRORS, Body, Doc, Param
from headwater.processing.gamification import BadgeIn, BadgePatch, ChallengeIn
from headwater.storage.gamification import GamificationSettings

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
            description="An invalid definition is refused with 400, naming the field and the reason.",
            body=(Body(ChallengeIn),),
            errors=WRITE,
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
            body=(Body(g.ChallengePatch),),
            errors=(*WRITE, 404),
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
