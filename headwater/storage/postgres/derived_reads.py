"""The read models the API serves from the derived tables on PostgreSQL, and the webhook
outbox's claims and attempts.

Every partition's rows are in one table, so a list that spans partitions is one query,
ordered as `records.Position` orders: by time, then partition, then `position`, newest first.
Text ties are broken with `COLLATE "C"` (byte order), as SQLite and Python compare strings,
whatever collation the database was created with.

Delivery workers on any number of machines share the outbox: a claim locks the rows it takes
with `FOR UPDATE SKIP LOCKED` and moves their `next_attempt_at` to the end of the claim, so a
concurrent claim neither waits for it nor takes the same row (a row it read as due before the
claim committed is checked again once its lock is free, and is no longer due).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.postgres.core import PgCore
from headwater.storage.records import (
    ActionQuery,
    ActionRecord,
    AttemptOutcome,
    BadgeAward,
    BoardKind,
    BoardRow,
    CatalogEntry,
    ClaimedDelivery,
    Completion,
    Delivery,
    DeliveryAttempt,
    DeliveryQuery,
    Enrollment,
    ParticipantState,
    PointsPeriod,
    Position,
    ProgressRow,
    SubjectProfile,
)

ACTION_COLUMNS = (
    "id, tenant, mode, trigger_id, trigger_name, event_id, event_type, subject, type, config, status,"
    " priority, event_time, created_at, error, result"
)
DELIVERY_COLUMNS = (
    "id, tenant, mode, endpoint_id, topic, message_key, payload, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, delivered_at"
)
ATTEMPT_COLUMNS = "delivery_id, endpoint_id, attempt, at, status_code, latency_ms, error"
COMPLETION_COLUMNS = "tenant, mode, challenge_id, participant_id, occurrence, period, completed_at, event_id"
NEWEST_FIRST = "DESC, partition DESC, position DESC"

STREAK_BOARD = """
WITH marked AS (
    SELECT participant_id, bucket, reached_at,
           bucket - row_number() OVER (PARTITION BY participant_id ORDER BY bucket) AS run
    FROM challenge_progress WHERE challenge_id = $1 AND bucket <= $2
), runs AS (
    SELECT participant_id, count(*) AS length, max(bucket) AS last, max(reached_at) AS reached
    FROM marked GROUP BY participant_id, run
)
SELECT participant_id, length, reached FROM runs WHERE last >= $3
ORDER BY length DESC, reached, participant_id COLLATE "C" LIMIT $4
"""

DUE = "status = 'pending' AND next_attempt_at <= $1 AND (attempts > round_start OR next_attempt_at <= $2)"
# The partitions that have a delivery due, in the order asked: one index probe each.
DUE_PARTITIONS = f"""
SELECT u.p FROM unnest($3::int[]) WITH ORDINALITY AS u(p, ord)
WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE partition = u.p AND {DUE})
ORDER BY u.ord
"""
# A claim in one partition: its due rows in the order of the index, skipping those another
# claim holds; their claim's end is their next attempt, so a sender that dies leaves them due.
CLAIM = f"""
WITH due AS (
    SELECT position, next_attempt_at AS due_at FROM webhook_deliveries WHERE partition = $5 AND {DUE}
    ORDER BY next_attempt_at, position LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET next_attempt_at = $4 FROM due WHERE d.position = due.position
RETURNING d.id, d.tenant, d.mode, d.endpoint_id, d.topic, d.payload, d.attempts, d.attempts - d.round_start,
    due.due_at, d.position
"""

# An attempt's outcome. Normally the delivery is pending. It may have failed meanwhile (its
# endpoint was disabled) or been delivered (by a worker that took over an expired claim): the
# attempt is recorded all the same, and only a success changes a settled status. A delivery
# deleted (with its endpoint) while it was being sent records nothing.
SETTLES = "(d.status = 'pending' OR $3::text = 'delivered')"
FINISH = f"""
WITH done AS (
    UPDATE webhook_deliveries d SET attempts = d.attempts + 1, last_status = $1, last_error = $2,
        status = CASE WHEN {SETTLES} THEN $3::text ELSE d.status END,
        next_attempt_at = CASE WHEN {SETTLES} THEN $4::bigint ELSE d.next_attempt_at END,
        delivered_at = CASE WHEN {SETTLES} THEN $5::bigint ELSE d.delivered_at END
    WHERE d.id = $6 RETURNING d.id
)
INSERT INTO webhook_attempts (partition, {ATTEMPT_COLUMNS})
SELECT $7, done.id, $8, $9, $10, $1, $11, $2 FROM done
ON CONFLICT (delivery_id, attempt) DO NOTHING
"""


def _opt_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _position(row: asyncpg.Record) -> Position:
    """The position of a row selected as (time, partition, position, ...)."""
    return Position(row[0], row[1], row[2])


def _row_to_action(row: Sequence[Any] | asyncpg.Record) -> ActionRecord:
    (id_, tenant, mode, trigger_id, trigger_name, event_id, event_type, subject, type_, config, status,
     priority, event_time, created_at, error, result) = row  # fmt: skip
    return ActionRecord(
        id=id_,
        tenant=tenant,
        mode=mode,
        trigger_id=trigger_id,
        trigger_name=trigger_name,
        event_id=event_id,
        event_type=event_type,
        subject=subject,
        type=type_,
        config=msgspec.Raw(config.encode()),
        status=status,
        priority=priority,
        event_time=from_us(event_time),
        created_at=from_us(created_at),
        error=error,
        result=None if result is None else msgspec.Raw(result.encode()),
    )


def _row_to_delivery(row: Sequence[Any] | asyncpg.Record) -> Delivery:
    (id_, tenant, mode, endpoint_id, topic, message_key, payload, status, attempts, next_at, last_status,
     last_error, created, delivered) = row  # fmt: skip
    return Delivery(
        id=id_,
        tenant=tenant,
        mode=mode,
        endpoint_id=endpoint_id,
        topic=topic,
        message_key=message_key,
        payload=msgspec.Raw(payload.encode()),
        status=status,
        attempts=attempts,
        next_attempt_at=_opt_us(next_at) if status == "pending" else None,
        last_status=last_status,
        last_error=last_error,
        created_at=from_us(created),
        delivered_at=_opt_us(delivered),
    )


def _row_to_attempt(row: Sequence[Any]) -> DeliveryAttempt:
    delivery, endpoint_id, attempt, at, status_code, latency_ms, error = row
    return DeliveryAttempt(delivery, endpoint_id, attempt, from_us(at), status_code, latency_ms, error)


def _board(rows: Sequence[asyncpg.Record]) -> list[BoardRow]:
    return [BoardRow(p, float(v), from_us(r)) for p, v, r in rows]


class Filters:
    """A WHERE clause of the conditions whose value is not None, with `$n` placeholders, as
    every list query applies its optional filters. A condition holds `{}` where its value goes;
    a `Position` fills three."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, value: Any) -> Filters:
        if value is not None:
            values = tuple(value) if isinstance(value, Position) else (value,)
            marks = [f"${len(self.args) + i + 1}" for i in range(len(values))]
            self.clauses.append(condition.format(*marks))
            self.args.extend(values)
        return self

    def before(self, time_column: str, position: Position | None) -> Filters:
        """Rows after `position` in newest-first order (the page after the one it ended)."""
        return self.add(f"({time_column}, partition, position) < ({{}}, {{}}, {{}})", position)

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses)

    @property
    def next(self) -> str:
        """The placeholder of an argument after the filters' (the limit)."""
        return f"${len(self.args) + 1}"


class PgDerivedReads:
    def __init__(self, core: PgCore) -> None:
        self.core = core

    # Triggers

    async def list_actions(self, query: ActionQuery) -> list[tuple[Position, ActionRecord]]:
        f = (
            Filters()
            .add("tenant = {}", query.tenant)
            .add("mode = {}", query.mode)
            .add("type = {}", query.type)
            .add("subject = {}", query.subject)
            .add("trigger_id = {}", query.trigger_id)
            .add("event_id = {}", query.event_id)
            .add("status = {}", query.status)
            .before("created_at", query.before)
        )
        sql = (
            f"SELECT created_at, partition, position, {ACTION_COLUMNS} FROM actions WHERE {f.where}"
            f" ORDER BY created_at {NEWEST_FIRST} LIMIT {f.next}"
        )
        rows = await self.core.fetch(sql, *f.args, query.limit)
        return [(_position(r), _row_to_action(tuple(r)[3:])) for r in rows]

    async def list_enrollments(self, tenant: str, mode: Mode, journey_id: str) -> list[Enrollment]:
        rows = await self.core.fetch(
            "SELECT id, journey_id, subject, status, action_id, enrolled_at FROM enrollments"
            " WHERE tenant = $1 AND mode = $2 AND journey_id = $3 ORDER BY enrolled_at, partition, position",
            tenant,
            mode,
            journey_id,
        )
        return [Enrollment(r[0], r[1], r[2], r[3], r[4], from_us(r[5])) for r in rows]

    async def get_profile(self, tenant: str, mode: Mode, subject: str) -> SubjectProfile | None:
        row = await self.core.fetchrow(
            "SELECT attributes, updated_at FROM profiles WHERE tenant = $1 AND mode = $2 AND subject = $3",
            tenant,
            mode,
            subject,
        )
        if row is None:
            return None
        return SubjectProfile(subject, msgspec.json.decode(row[0]), from_us(row[1]))

    # The webhook outbox

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None:
        row = await self.core.fetchrow(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND tenant = $2 AND mode = $3",
            delivery_id,
            tenant,
            mode,
        )
        return None if row is None else _row_to_delivery(row)

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[Position, Delivery]]:
        f = (
            Filters()
            .add("tenant = {}", query.tenant)
            .add("mode = {}", query.mode)
            .add("status = {}", query.status)
            .add("endpoint_id = {}", query.endpoint_id)
            .before("created_at", query.before)
        )
        sql = (
            f"SELECT created_at, partition, position, {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {f.where}"
            f" ORDER BY created_at {NEWEST_FIRST} LIMIT {f.next}"
        )
        rows = await self.core.fetch(sql, *f.args, query.limit)
        return [(_position(r), _row_to_delivery(tuple(r)[3:])) for r in rows]

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        row = await self.core.fetchrow(
            "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts, next_attempt_at = $1"
            " WHERE id = $2 AND tenant = $3 AND mode = $4 AND status = 'failed'"
            f" RETURNING {DELIVERY_COLUMNS}",
            to_us(at),
            delivery_id,
            tenant,
            mode,
        )
        return None if row is None else _row_to_delivery(row)

    async def list_webhook_attempts(
        self, endpoint_id: str, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeliveryAttempt]]:
        f = Filters().add("endpoint_id = {}", endpoint_id).before("at", before)
        rows = await self.core.fetch(
            f"SELECT at, partition, position, {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE {f.where}"
            f" ORDER BY at {NEWEST_FIRST} LIMIT {f.next}",
            *f.args,
            limit,
        )
        return [(_position(r), _row_to_attempt(tuple(r)[3:])) for r in rows]

    async def fail_pending(self, endpoint_id: str, reason: str) -> None:
        await self.core.execute(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $1, next_attempt_at = NULL"
            " WHERE endpoint_id = $2 AND status = 'pending'",
            f"endpoint disabled: {reason}",
            endpoint_id,
        )

    async def forget_endpoint(self, endpoint_id: str) -> None:
        async with self.core.transaction() as conn:
            await conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = $1", endpoint_id)
            await conn.execute("DELETE FROM webhook_attempts WHERE endpoint_id = $1", endpoint_id)

    async def claim_deliveries(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        first_delay: float = 0.0,
        partitions: Sequence[int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Partition by partition (in the order given), each by due time, as the SQLite
        backend takes them. A poll that finds nothing due costs one query and no lock."""
        wanted = list(dict.fromkeys(range(self.core.partitions) if partitions is None else partitions))
        due_us, first_due_us = to_us(now), to_us(now - timedelta(seconds=first_delay))
        if limit <= 0 or not wanted:
            return []
        claimed: list[ClaimedDelivery] = []
        async with self.core.connection() as conn:
            busy = [r[0] for r in await conn.fetch(DUE_PARTITIONS, due_us, first_due_us, wanted)]
            if not busy:
                return []
            async with conn.transaction():
                for p in busy:
                    rows = await conn.fetch(CLAIM, due_us, first_due_us, limit - len(claimed), to_us(lease_until), p)
                    # RETURNING keeps no order: put them back in the order they were taken.
                    rows.sort(key=lambda r: (r[8], r[9]))
                    claimed += [
                        ClaimedDelivery(r[0], r[1], r[2], r[3], r[4], r[5].encode(), r[6], r[7], p) for r in rows
                    ]
                    if len(claimed) >= limit:
                        break
        return claimed

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        attempt = outcome.attempt
        at_us = to_us(attempt.at)
        await self.core.execute(
            FINISH,
            attempt.status_code,
            attempt.error,
            outcome.status,
            None if outcome.next_attempt_at is None else to_us(outcome.next_attempt_at),
            at_us if outcome.status == "delivered" else None,
            attempt.delivery_id,
            outcome.partition,
            attempt.endpoint_id,
            attempt.attempt,
            at_us,
            attempt.latency_ms,
        )

    # Facts and gamification

    async def fact_effects(self, tenant: str, mode: Mode, participant: str | None, fact_id: str) -> bytes | None:
        effects = await self.core.fetchval("SELECT effects FROM fact_effects WHERE fact_id = $1", fact_id)
        return None if effects is None else str(effects).encode()

    async def participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantState:
        async with self.core.connection() as conn:
            points = await conn.fetchval(
                "SELECT points FROM points_totals WHERE tenant = $1 AND mode = $2 AND period = 'all_time'"
                " AND bucket = 0 AND participant_id = $3",
                tenant,
                mode,
                participant,
            )
            badges = await conn.fetch(
                "SELECT badge, awarded_at, reason, event_id FROM badge_awards"
                ' WHERE tenant = $1 AND mode = $2 AND participant_id = $3 ORDER BY awarded_at, badge COLLATE "C"',
                tenant,
                mode,
                participant,
            )
            # Challenge ids are unique across tenants; the caller keeps those of the tenant.
            challenges = await conn.fetch(
                "SELECT challenge_id FROM challenge_progress WHERE participant_id = $1"
                ' GROUP BY challenge_id ORDER BY challenge_id COLLATE "C"',
                participant,
            )
        return ParticipantState(
            None if points is None else int(points),
            [BadgeAward(tenant, mode, participant, b, from_us(at), reason, e) for b, at, reason, e in badges],
            [r[0] for r in challenges],
        )

    async def progress_rows(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> list[ProgressRow]:
        rows = await self.core.fetch(
            "SELECT bucket, value, reached_at FROM challenge_progress WHERE challenge_id = $1 AND participant_id = $2"
            " AND bucket BETWEEN $3 AND $4 ORDER BY bucket",
            challenge_id,
            participant,
            low,
            high,
        )
        return [ProgressRow(b, float(v), from_us(r)) for b, v, r in rows]

    async def distinct_total(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> int:
        count = await self.core.fetchval(
            "SELECT count(DISTINCT value) FROM challenge_values WHERE challenge_id = $1 AND participant_id = $2"
            " AND bucket BETWEEN $3 AND $4",
            challenge_id,
            participant,
            low,
            high,
        )
        return int(count)

    async def list_completions(self, tenant: str, mode: Mode, challenge_id: str, participant: str) -> list[Completion]:
        rows = await self.core.fetch(
            f"SELECT {COMPLETION_COLUMNS} FROM challenge_completions WHERE challenge_id = $1 AND participant_id = $2"
            ' ORDER BY period, completed_at, occurrence COLLATE "C"',
            challenge_id,
            participant,
        )
        return [Completion(t, m, c, p, o, period, from_us(at), e) for t, m, c, p, o, period, at, e in rows]

    async def points_board(
        self, tenant: str, mode: Mode, period: PointsPeriod, bucket: int, limit: int
    ) -> list[BoardRow]:
        rows = await self.core.fetch(
            "SELECT participant_id, points, reached_at FROM points_totals"
            " WHERE tenant = $1 AND mode = $2 AND period = $3 AND bucket = $4"
            ' ORDER BY points DESC, reached_at, participant_id COLLATE "C" LIMIT $5',
            tenant,
            mode,
            period,
            bucket,
            limit,
        )
        return _board(rows)

    async def challenge_board(
        self, challenge_id: str, kind: BoardKind, low: int, high: int, limit: int
    ) -> list[BoardRow]:
        if kind == "streak":
            return _board(await self.core.fetch(STREAK_BOARD, challenge_id, high, low, limit))
        table, value = ("challenge_values", "count(DISTINCT value)") if kind == "distinct" else (
            "challenge_progress", "sum(value)")  # fmt: skip
        rows = await self.core.fetch(
            f"SELECT participant_id, {value} AS total, max(reached_at) AS reached FROM {table}"
            " WHERE challenge_id = $1 AND bucket BETWEEN $2 AND $3 GROUP BY participant_id"
            ' ORDER BY total DESC, reached, participant_id COLLATE "C" LIMIT $4',
            challenge_id,
            low,
            high,
            limit,
        )
        return _board(rows)

    # The catalog

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]:
        async with self.core.connection() as conn:
            found = await conn.fetch(
                "SELECT type, name, json_type FROM catalog_properties WHERE tenant = $1 AND mode = $2"
                ' ORDER BY type COLLATE "C", name COLLATE "C", json_type COLLATE "C"',
                tenant,
                mode,
            )
            entries = await conn.fetch(
                "SELECT type, count, first_seen, last_seen, violations FROM catalog"
                ' WHERE tenant = $1 AND mode = $2 ORDER BY type COLLATE "C"',
                tenant,
                mode,
            )
        properties: dict[str, dict[str, list[str]]] = {}
        for type_, name, json_type in found:
            properties.setdefault(type_, {}).setdefault(name, []).append(json_type)
        return [
            CatalogEntry(type_, count, from_us(first), from_us(last), violations, properties.get(type_, {}))
            for type_, count, first, last, violations in entries
        ]

    async def catalog_types(self, scopes: Sequence[tuple[str, Mode]]) -> set[tuple[str, Mode, str]]:
        wanted = sorted(set(scopes))
        if not wanted:
            return set()
        rows = await self.core.fetch(
            "SELECT c.tenant, c.mode, c.type FROM unnest($1::text[], $2::text[]) AS s(tenant, mode)"
            " JOIN catalog c ON c.tenant = s.tenant AND c.mode = s.mode",
            [t for t, _ in wanted],
            [m for _, m in wanted],
        )
        return {(r[0], r[1], r[2]) for r in rows}
