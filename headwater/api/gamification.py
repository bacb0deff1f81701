"""`/v1/badges`, `/v1/challenges`, `/v1/settings`, `/v1/participants`, `/v1/leaderboards`, `/v1/facts`.

Definitions are per tenant and mode (the key's). Reads that depend on "now" (the current
day's progress, the current week's leaderboard) take `at` (an ISO date or time, default the
server's clock): the period holding `at` in the tenant's time zone is the one answered.

Leaderboard order: most first; ties go to whoever reached the value earlier (by event time),
then to the smaller participant id. Ranks are positions 1, 2, 3, ... in that order.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, int_param, json_response, read_json
from headwater.auth import Principal
from headwater.clock import from_us, system_now, to_us
from headwater.errors import ApiError, bad_request
from headwater.events import Event, FieldError
from headwater.ids import new_prefixed_id
from headwater.parsing import decode_json, field_error, parse_range_bound
from headwater.processing import waiting
from headwater.processing.awards import fact_type_of
from headwater.processing.conditions import ConditionError
from headwater.processing.consumer import FactsEngine
from headwater.processing.facts import Award, ProgressChange, make_fact, read_effects
from headwater.processing.gamification import (
    BadgeIn,
    BadgePatch,
    ChallengeIn,
    CompiledChallenge,
    DefinitionError,
    Metric,
    Reward,
    bucket_label,
    bucket_of,
    checked_settings,
    compile_challenge,
    level_for,
    local_day,
    normalized,
    plain,
    timezone,
)
from headwater.services import Services
from headwater.storage.log import EventQuery
from headwater.storage.records import ActionQuery, BoardKind, Fact, PointsPeriod
from headwater.storage.registry import BadgeRecord, ChallengeRecord, GamificationSettings

_challenge = msgspec.json.Decoder(ChallengeIn)
_encode = msgspec.json.encode
POINTS_PERIODS: tuple[PointsPeriod, ...] = ("all_time", "daily", "weekly", "monthly")
FACT_CURSOR_PATTERN = r"^-?[0-9]{1,18}_[0-9]{1,18}$"  # <occurred_at µs>_<log offset>
_FACT_CURSOR = re.compile(FACT_CURSOR_PATTERN)


class BadgeOut(msgspec.Struct):
    key: str
    name: str
    description: str | None
    image_url: str | None
    created_at: datetime
    updated_at: datetime


class BadgeList(msgspec.Struct):
    data: list[BadgeOut]


class ChallengeOut(msgspec.Struct):
    id: str
    name: str
    fact_type: str
    metric: Metric
    target: int | float
    period: str
    conditions: dict[str, Any] | None
    starts_at: datetime | None
    ends_at: datetime | None
    repeatable: bool
    reward: Reward | None
    created_at: datetime
    updated_at: datetime


class ChallengeList(msgspec.Struct):
    data: list[ChallengeOut]


class ParticipantBadge(msgspec.Struct):
    badge: str
    awarded_at: datetime
    reason: str


class ParticipantChallenge(msgspec.Struct):
    challenge_id: str
    progress: int | float
    target: int | float
    completed_at: datetime | None
    streak: int | None


class ParticipantOut(msgspec.Struct):
    participant_id: str
    points: int
    level: int | None
    badges: list[ParticipantBadge]
    challenges: list[ParticipantChallenge]


class PointsEntryOut(msgspec.Struct):
    rank: int
    participant_id: str
    points: int
    level: int | None
    reached_at: datetime


class PointsBoard(msgspec.Struct):
    period: str
    bucket: str
    data: list[PointsEntryOut]


class ChallengeEntryOut(msgspec.Struct):
    rank: int
    participant_id: str
    progress: int | float
    reached_at: datetime


class ChallengeBoard(msgspec.Struct):
    challenge_id: str
    period: str
    bucket: str
    target: int | float
    data: list[ChallengeEntryOut]


class FactOut(msgspec.Struct):
    fact_id: str
    fact_type: str
    participant_id: str | None
    event_id: str
    data: msgspec.Raw
    occurred_at: datetime
    processed_at: datetime


class FactPage(msgspec.Struct):
    data: list[FactOut]
    next_cursor: str | None


def _badge_out(record: BadgeRecord) -> BadgeOut:
    return BadgeOut(record.key, record.name, record.description, record.image_url, record.created_at, record.updated_at)


def _challenge_out(record: ChallengeRecord) -> ChallengeOut:
    rule = _challenge.decode(record.definition)
    return ChallengeOut(
        record.id,
        rule.name,
        rule.fact_type,
        rule.metric,
        rule.target,
        rule.period,
        rule.conditions,
        rule.starts_at,
        rule.ends_at,
        rule.repeatable,
        rule.reward,
        record.created_at,
        record.updated_at,
    )


def _fact_out(fact: Fact) -> FactOut:
    return FactOut(
        fact.fact_id, fact.fact_type, fact.participant_id, fact.event_id, fact.data, fact.occurred_at, fact.processed_at
    )


def _invalid(what: str, path: str, message: str) -> ApiError:
    return ApiError(400, f"invalid {what}", [FieldError(path, "invalid", message)])


def _decode(body: bytes, type_: type[Any], what: str) -> Any:
    try:
        return decode_json(body, type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid {what}", [field_error(exc)]) from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None


async def _body(request: Request) -> bytes:
    body = await request.body()
    if not body:
        raise bad_request("request body is empty: send a JSON object", code="required")
    return body


def _at(request: Request) -> datetime:
    raw = request.query_params.get("at")
    if raw is None:
        return system_now()
    try:
        at = parse_range_bound(raw, upper=False)
    except ValueError as exc:
        raise bad_request(str(exc), "at", "invalid_format") from None
    return at


def _bound(request: Request, name: str, *, upper: bool) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_range_bound(raw, upper=upper)
    except ValueError as exc:
        raise bad_request(str(exc), name, "invalid_format") from None


def _streak_back(buckets: set[int], current: int) -> int:
    """The run of consecutive buckets ending at `current`, or at the one before it when
    `current` has none yet (a streak is not broken before its period is over)."""
    end = current if current in buckets else current - 1
    length = 0
    while end - length in buckets:
        length += 1
    return length


FACTS = FactsEngine.name


class GamificationRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store

    async def _settings(self, principal: Principal) -> GamificationSettings:
        return await self.store.registry.get_settings(principal.tenant, principal.mode) or GamificationSettings()

    # Badges

    async def found_badge(self, principal: Principal, key: str) -> BadgeRecord:
        record = await self.store.registry.get_badge(principal.tenant, principal.mode, key)
        if record is None:
            raise ApiError(404, "no such badge")
        return record

    async def create_badge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        body: BadgeIn = _decode(await _body(request), BadgeIn, "badge")
        now = system_now()
        record = BadgeRecord(body.key, body.name, body.description, body.image_url, now, now)
        if not await self.store.registry.create_badge(principal.tenant, principal.mode, record):
            raise ApiError(
                409, "a badge with this key exists", [FieldError("key", "taken", "a badge with this key exists")]
            )
        await audit.record(self.services, principal, "badge.create", record.key)
        return json_response(_badge_out(record), status=201)

    async def list_badges(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        records = await self.store.registry.list_badges(principal.tenant, principal.mode)
        return json_response(BadgeList([_badge_out(r) for r in records]))

    async def get_badge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        return json_response(_badge_out(await self.found_badge(principal, request.path_params["key"])))

    async def patch_badge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        existing = await self.found_badge(principal, request.path_params["key"])
        body = await _body(request)
        patch: BadgePatch = _decode(body, BadgePatch, "badge")
        given = msgspec.json.decode(body)
        record = BadgeRecord(
            existing.key,
            patch.name or existing.name,
            patch.description if "description" in given else existing.description,
            patch.image_url if "image_url" in given else existing.image_url,
            existing.created_at,
            system_now(),
        )
        await self.store.registry.update_badge(principal.tenant, principal.mode, record)
        await audit.record(self.services, principal, "badge.update", record.key)
        return json_response(_badge_out(record))

    async def delete_badge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        record = await self.found_badge(principal, request.path_params["key"])
        for challenge in await self.store.registry.list_challenges(principal.tenant, principal.mode):
            rule = _challenge.decode(challenge.definition)
            if rule.reward is not None and rule.reward.badge == record.key:  # UNSET is never a key
                raise ApiError(
                    409,
                    f"challenge {challenge.id} rewards this badge: change or delete it first",
                    [FieldError("key", "in_use", f"rewarded by challenge {challenge.id}")],
                )
        await self.store.registry.delete_badge(principal.tenant, principal.mode, record.key)
        await audit.record(self.services, principal, "badge.delete", record.key)
        return json_response(_badge_out(record))

    # Challenges

    async def found_challenge(self, principal: Principal, challenge_id: str) -> ChallengeRecord:
        record = await self.store.registry.get_challenge(principal.tenant, principal.mode, challenge_id)
        if record is None:
            raise ApiError(404, "no such challenge")
        return record

    async def validated(self, principal: Principal, body: bytes) -> ChallengeIn:
        """Decode and compile a definition; every problem is a 400 naming the bad field."""
        rule: ChallengeIn = _decode(body, ChallengeIn, "challenge")
        try:
            compile_challenge("check", rule)
        except (DefinitionError, ConditionError) as exc:
            raise _invalid("challenge", exc.path, exc.message) from None
        badge = None if rule.reward is None else rule.reward.badge
        if (
            isinstance(badge, str)
            and await self.store.registry.get_badge(principal.tenant, principal.mode, badge) is None
        ):
            # A reference to what does not exist (yet) conflicts with the tenant's badges: 409.
            message = f"no badge {badge!r}: create it first"
            raise ApiError(409, message, [FieldError("reward.badge", "not_found", message)])
        return normalized(rule)

    async def save(self, principal: Principal, rule: ChallengeIn, existing: ChallengeRecord | None) -> ChallengeRecord:
        now = system_now()
        record = ChallengeRecord(
            id=existing.id if existing else new_prefixed_id("chl"),
            tenant=principal.tenant,
            mode=principal.mode,
            definition=msgspec.Raw(_encode(rule)),
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        await self.store.registry.put_challenge(record)
        await audit.record(self.services, principal, "challenge.update" if existing else "challenge.create", record.id)
        return record

    async def create_challenge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        rule = await self.validated(principal, await _body(request))
        return json_response(_challenge_out(await self.save(principal, rule, None)), status=201)

    async def list_challenges(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        records = await self.store.registry.list_challenges(principal.tenant, principal.mode)
        return json_response(ChallengeList([_challenge_out(r) for r in records]))

    async def get_challenge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        return json_response(_challenge_out(await self.found_challenge(principal, request.path_params["challenge_id"])))

    async def patch_challenge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        existing = await self.found_challenge(principal, request.path_params["challenge_id"])
        changes = await read_json(request, dict[str, msgspec.Raw])
        merged = msgspec.json.decode(existing.definition, type=dict[str, msgspec.Raw])
        merged.update(changes)
        rule = await self.validated(principal, _encode(merged))
        return json_response(_challenge_out(await self.save(principal, rule, existing)))

    async def delete_challenge(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        record = await self.found_challenge(principal, request.path_params["challenge_id"])
        await self.store.registry.delete_challenge(principal.tenant, principal.mode, record.id)
        await audit.record(self.services, principal, "challenge.delete", record.id)
        return json_response(_challenge_out(record))

    # Settings

    async def get_settings(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        return json_response(await self._settings(principal))

    async def put_settings(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        settings: GamificationSettings = _decode(await _body(request), GamificationSettings, "settings")
        try:
            settings = checked_settings(settings)
        except DefinitionError as exc:
            raise _invalid("settings", exc.path, exc.message) from None
        await self.store.registry.put_settings(principal.tenant, principal.mode, settings, system_now())
        await audit.record(self.services, principal, "settings.update", None, timezone=settings.timezone)
        return json_response(settings)

    # Reads

    def _compiled(self, record: ChallengeRecord) -> CompiledChallenge:
        return compile_challenge(record.id, _challenge.decode(record.definition))

    async def _progress(
        self, principal: Principal, challenge: CompiledChallenge, participant: str, day: date
    ) -> tuple[float, datetime | None, int | None]:
        """(progress in the period holding `day`, latest completion, streak)."""
        c = challenge
        derived = self.store.derived
        scope = (principal.tenant, principal.mode)
        completions = await derived.list_completions(*scope, c.id, participant)
        completed_at = max((x.completed_at for x in completions), default=None)
        if c.metric == "streak":
            assert c.streak_unit is not None
            current = bucket_of(c.streak_unit, day)
            rows = await derived.progress_rows(*scope, c.id, participant, 0, current)
            run = _streak_back({r.bucket for r in rows}, current)
            return float(run), completed_at, run
        kind = c.period.kind
        if kind == "rolling":
            end = day.toordinal()
            low = end - c.period.days + 1
            if c.metric == "distinct":
                value = float(await derived.distinct_total(*scope, c.id, participant, low, end))
            else:
                value = sum(r.value for r in await derived.progress_rows(*scope, c.id, participant, low, end))
            return value, completed_at, None
        bucket = bucket_of(kind, day)
        rows = await derived.progress_rows(*scope, c.id, participant, bucket, bucket)
        value = rows[0].value if rows else 0.0
        streak = None
        if kind != "all_time":
            streak = _streak_back({x.period for x in completions}, bucket)
        return value, completed_at, streak

    async def participant(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        participant_id = request.path_params["participant_id"]
        at = _at(request)
        state = await self.store.derived.participant(principal.tenant, principal.mode, participant_id)
        # Challenge ids are unique across tenants: keep those of this tenant and mode.
        defined = await self.store.registry.list_challenges(principal.tenant, principal.mode)
        with_progress = [c for c in defined if c.id in set(state.challenges)]
        if state.points is None and not state.badges and not with_progress:
            seen = await self.store.log.query_events(
                EventQuery(principal.tenant, principal.mode, subject=participant_id, limit=1,
                           processed=await self._processed())
            )  # fmt: skip
            if not seen:
                raise ApiError(404, "no such participant")
        settings = await self._settings(principal)
        day = local_day(at, timezone(settings.timezone))
        challenges = []
        for stored in with_progress:
            challenge_id = stored.id
            compiled = self._compiled(stored)
            progress, completed_at, streak = await self._progress(principal, compiled, participant_id, day)
            challenges.append(
                ParticipantChallenge(challenge_id, plain(progress), plain(compiled.target), completed_at, streak)
            )
        points = state.points or 0
        return json_response(
            ParticipantOut(
                participant_id,
                points,
                level_for(points, settings.levels),
                [ParticipantBadge(b.badge, b.awarded_at, b.reason) for b in state.badges],
                challenges,
            )
        )

    async def points_leaderboard(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        period = request.query_params.get("period", "all_time")
        if period not in POINTS_PERIODS:
            raise bad_request(f"period must be one of {', '.join(POINTS_PERIODS)}", "period", "invalid")
        limit = int_param(request, "limit", 10, 1, 1000)
        settings = await self._settings(principal)
        bucket = bucket_of(period, local_day(_at(request), timezone(settings.timezone)))
        rows = await self.store.derived.points_board(principal.tenant, principal.mode, period, bucket, limit)
        data = [
            PointsEntryOut(rank, r.participant_id, int(r.value), level_for(int(r.value), settings.levels), r.reached_at)
            for rank, r in enumerate(rows, start=1)
        ]
        return json_response(PointsBoard(period, bucket_label(period, bucket), data))

    async def challenge_leaderboard(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        record = await self.found_challenge(principal, request.path_params["challenge_id"])
        c = self._compiled(record)
        limit = int_param(request, "limit", 10, 1, 1000)
        settings = await self._settings(principal)
        day = local_day(_at(request), timezone(settings.timezone))
        kind: BoardKind = "sum"
        if c.metric == "streak":
            assert c.streak_unit is not None
            high = bucket_of(c.streak_unit, day)
            low, kind, label = high - 1, "streak", bucket_label(c.streak_unit, high)
        elif c.period.kind == "rolling":
            high = day.toordinal()
            low = high - c.period.days + 1
            kind = "distinct" if c.metric == "distinct" else "sum"
            label = f"{bucket_label('daily', max(low, 1))}..{bucket_label('daily', high)}"
        else:
            low = high = bucket_of(c.period.kind, day)
            label = bucket_label(c.period.kind, low)
        rows = await self.store.derived.challenge_board(c.id, kind, low, high, limit)
        data = [
            ChallengeEntryOut(rank, r.participant_id, plain(r.value), r.reached_at)
            for rank, r in enumerate(rows, start=1)
        ]
        period = record_period(record)
        return json_response(ChallengeBoard(c.id, period, label, plain(c.target), data))

    async def facts(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        params = request.query_params
        before = None
        if (cursor := params.get("cursor")) is not None:
            if not _FACT_CURSOR.match(cursor):
                raise bad_request("cursor is not one this API returned", "cursor", "invalid")
            time_us, offset = cursor.split("_")
            before = (int(time_us), int(offset))
        limit = int_param(request, "limit", 100, 1, 1000)
        fact_type = params.get("fact_type")
        query = EventQuery(
            principal.tenant,
            principal.mode,
            types=() if fact_type is None else (fact_type.removeprefix("custom."),),
            subject=params.get("participant"),
            time_from=_bound(request, "from", upper=False),
            time_to=_bound(request, "to", upper=True),
            before=None if before is None else (from_us(before[0]), before[1]),
            limit=limit + 1,
            processed=await self._processed(),
        )
        events = await self._facts_of(query, fact_type)
        page = events[:limit]
        next_cursor = None
        if len(events) > limit:
            next_cursor = f"{to_us(page[-1].time)}_{page[-1].seq}"
        return json_response(FactPage([_fact_out(make_fact(e)) for e in page], next_cursor))

    async def _processed(self) -> dict[int, int]:
        """Per partition, how far the facts consumer has come: facts are the events before it."""
        return {p: seq for (name, p), seq in (await self.store.derived.checkpoints()).items() if name == FACTS}

    async def _facts_of(self, query: EventQuery, fact_type: str | None) -> list[Event]:
        """The page of events whose fact has `fact_type`. The event type narrows through the
        log's index; whether the fact is a client's `custom.` one or an award's is decided on
        the event, reading on past the ones that are not."""
        wanted = query.limit
        found: list[Event] = []
        while True:
            events = await self.store.log.query_events(query)
            found.extend(e for e in events if fact_type is None or fact_type_of(e) == fact_type)
            if len(found) >= wanted or len(events) < query.limit:
                return found[:wanted]
            query = msgspec.structs.replace(query, before=(events[-1].time, events[-1].seq or 0))


def record_period(record: ChallengeRecord) -> str:
    return _challenge.decode(record.definition).period


def routes(services: Services) -> list[BaseRoute]:
    r = GamificationRoutes(services)
    return [
        Route("/v1/badges", r.create_badge, methods=["POST"]),
        Route("/v1/badges", r.list_badges, methods=["GET"]),
        Route("/v1/badges/{key}", r.get_badge, methods=["GET"]),
        Route("/v1/badges/{key}", r.patch_badge, methods=["PATCH"]),
        Route("/v1/badges/{key}", r.delete_badge, methods=["DELETE"]),
        Route("/v1/challenges", r.create_challenge, methods=["POST"]),
        Route("/v1/challenges", r.list_challenges, methods=["GET"]),
        Route("/v1/challenges/{challenge_id}", r.get_challenge, methods=["GET"]),
        Route("/v1/challenges/{challenge_id}", r.patch_challenge, methods=["PATCH"]),
        Route("/v1/challenges/{challenge_id}", r.delete_challenge, methods=["DELETE"]),
        Route("/v1/challenges/{challenge_id}/leaderboard", r.challenge_leaderboard, methods=["GET"]),
        Route("/v1/settings", r.get_settings, methods=["GET"]),
        Route("/v1/settings", r.put_settings, methods=["PUT"]),
        Route("/v1/participants/{participant_id}", r.participant, methods=["GET"]),
        Route("/v1/leaderboards/points", r.points_leaderboard, methods=["GET"]),
        Route("/v1/facts", r.facts, methods=["GET"]),
    ]


class Processed(msgspec.Struct):
    """A processed event, as 003's `/sync` answers it: its fact, and what the fact changed."""

    event_id: str
    fact_id: str
    fact_type: str
    processed_at: datetime
    progress: list[ProgressChange]
    awards: list[Award]


async def processed(services: Services, principal: Principal, event_id: str, partition: int, seq: int) -> Processed:
    """Wait until the facts and trigger consumers have applied the event (at `seq` in
    `partition`), then the event's fact with its progress changes and the awards it caused
    (challenge rewards, then trigger actions). 503 when processing does not catch up within
    `sync_timeout`."""
    store = services.store
    event = None
    if await waiting.processed(store, [(partition, seq)], services.settings.sync_timeout, bus=services.bus):
        event = await store.log.get_event(principal.tenant, principal.mode, event_id)
    if event is None:
        raise ApiError(503, "the event is stored, but processing did not finish in time", headers={"Retry-After": "1"})
    fact = make_fact(event)
    raw = await store.derived.fact_effects(event.tenant, event.mode, event.subject, fact.fact_id)
    progress, awards = read_effects(raw)
    actions = await services.store.derived.list_actions(
        ActionQuery(principal.tenant, principal.mode, event_id=event_id)
    )
    for _, action in reversed(actions):
        if action.status != "dispatched" or action.type not in ("award_badge", "award_points"):
            continue
        config = msgspec.json.decode(action.config)
        reason = str(config.get("reason") or f"trigger:{action.trigger_id}")
        if action.type == "award_badge":
            awards.append(Award("badge.awarded", badge=config["badge"], reason=reason))
        else:
            awards.append(Award("points.awarded", points=int(config["points"]), reason=reason))
    return Processed(fact.event_id, fact.fact_id, fact.fact_type, fact.processed_at, progress, awards)
