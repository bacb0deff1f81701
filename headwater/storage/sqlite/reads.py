"""The read models the API serves from one partition's derived state on SQLite, and its part
of the webhook outbox. Lists that span partitions give each row its `Position`; the store
that holds every partition merges them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.effects import NewDelivery
from headwater.storage.records import (
    ActionQuery,
    ActionRecord,
    AttemptOutcome,
    BadgeAward,
    BoardKind,
    BoardRow,
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
from headwater.storage.sqlite.core import SqliteCore, Transaction, where
from headwater.storage.sqlite.derived_schema import ACTION_COLUMNS, COMPLETION_COLUMNS, write_deliveries

DELIVERY_COLUMNS = (
    "id, tenant, mode, endpoint_id, topic, message_key, payload, status, attempts, next_attempt_at,"
    " last_status, last_error, created_at, delivered_at"
)
ATTEMPT_COLUMNS = "delivery_id, endpoint_id, attempt, at, status_code, latency_ms, error"
# The number of the challenge id bound at this place (see challenge_keys).
NUM = "(SELECT num FROM challenge_keys WHERE challenge_id = ?)"
STREAK_BOARD = f"""
WITH marked AS (
    SELECT participant_id, bucket, reached_at,
           bucket - row_number() OVER (PARTITION BY participant_id ORDER BY bucket) AS run
    FROM challenge_progress WHERE challenge = {NUM} AND bucket <= ?
), runs AS (
    SELECT participant_id, count(*) AS length, max(bucket) AS last, max(reached_at) AS reached
    FROM marked GROUP BY participant_id, run
)
SELECT participant_id, length, reached FROM runs WHERE last >= ?
ORDER BY length DESC, reached, participant_id LIMIT ?
"""


def _opt_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _row_to_action(row: tuple[Any, ...]) -> ActionRecord:
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


def _row_to_delivery(row: tuple[Any, ...]) -> Delivery:
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


def _row_to_attempt(row: tuple[Any, ...]) -> DeliveryAttempt:
    delivery, endpoint_id, attempt, at, status_code, latency_ms, error = row
    return DeliveryAttempt(delivery, endpoint_id, attempt, from_us(at), status_code, latency_ms, error)


def _row_to_completion(row: tuple[Any, ...]) -> Completion:
    tenant, mode, challenge_id, participant, occurrence, period, completed, event_id = row
    return Completion(tenant, mode, challenge_id, participant, occurrence, period, from_us(completed), event_id)


def _board(rows: Any) -> list[BoardRow]:
    return [BoardRow(p, float(v), from_us(r)) for p, v, r in rows]


def fail_pending(conn: sqlite3.Connection, endpoint_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = ?, next_attempt_at = NULL"
        " WHERE endpoint_id = ? AND status = 'pending'",
        (f"endpoint disabled: {reason}", endpoint_id),
    )


class ReadModels(SqliteCore):
    partition: int  # which partition's state this file holds

    # Positions in lists that span partitions

    def before(self, time_column: str) -> str:
        """The condition "before the position given": by time, then partition, then row."""
        return f"({time_column}, {self.partition}, position) < (?, ?, ?)"

    @staticmethod
    def unpack(args: list[Any]) -> list[Any]:
        """`where`'s arguments with a position spread into its three parts."""
        return [x for a in args for x in (a if isinstance(a, Position) else (a,))]

    def at(self, row: tuple[Any, ...]) -> Position:
        """The position of a row selected as (time, position, ...)."""
        return Position(row[0], self.partition, row[1])

    # Triggers

    async def list_actions(self, query: ActionQuery) -> list[tuple[Position, ActionRecord]]:
        clause, args = where(
            ("tenant = ?", query.tenant),
            ("mode = ?", query.mode),
            ("type = ?", query.type),
            ("subject = ?", query.subject),
            ("trigger_id = ?", query.trigger_id),
            ("event_id = ?", query.event_id),
            ("status = ?", query.status),
            (self.before("created_at"), query.before),
        )
        args = self.unpack(args)
        args.append(query.limit)
        sql = (
            f"SELECT created_at, position, {ACTION_COLUMNS} FROM actions WHERE {clause}"
            " ORDER BY created_at DESC, position DESC LIMIT ?"
        )
        return await self.read(lambda conn: [(self.at(r), _row_to_action(r[2:])) for r in conn.execute(sql, args)])

    async def list_enrollments(self, tenant: str, mode: Mode, journey_id: str) -> list[Enrollment]:
        sql = (
            "SELECT id, journey_id, subject, status, action_id, enrolled_at FROM enrollments"
            " WHERE tenant = ? AND mode = ? AND journey_id = ? ORDER BY enrolled_at, rowid"
        )
        return await self.read(
            lambda conn: [
                Enrollment(r[0], r[1], r[2], r[3], r[4], from_us(r[5]))
                for r in conn.execute(sql, (tenant, mode, journey_id))
            ]
        )

    async def get_profile(self, tenant: str, mode: Mode, subject: str) -> SubjectProfile | None:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT attributes, updated_at FROM profiles WHERE tenant = ? AND mode = ? AND subject = ?",
                (tenant, mode, subject),
            ).fetchone()
        )
        if row is None:
            return None
        return SubjectProfile(subject, msgspec.json.decode(row[0]), from_us(row[1]))

    # The webhook outbox

    async def enqueue(self, deliveries: Sequence[NewDelivery]) -> None:
        await self.write(lambda tx: write_deliveries(tx.conn, deliveries))

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None:
        sql = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute(sql, (delivery_id, tenant, mode)).fetchone()
            return None if row is None else _row_to_delivery(row)

        return await self.read(run)

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[Position, Delivery]]:
        clause, args = where(
            ("tenant = ?", query.tenant),
            ("mode = ?", query.mode),
            ("status = ?", query.status),
            ("endpoint_id = ?", query.endpoint_id),
            (self.before("created_at"), query.before),
        )
        args = self.unpack(args)
        args.append(query.limit)
        sql = (
            f"SELECT created_at, position, {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE {clause}"
            " ORDER BY created_at DESC, position DESC LIMIT ?"
        )
        return await self.read(lambda conn: [(self.at(r), _row_to_delivery(r[2:])) for r in conn.execute(sql, args)])

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        def run(tx: Transaction) -> Delivery | None:
            row = tx.conn.execute(
                "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts, next_attempt_at = ?"
                " WHERE id = ? AND tenant = ? AND mode = ? AND status = 'failed'"
                f" RETURNING {DELIVERY_COLUMNS}",
                (to_us(at), delivery_id, tenant, mode),
            ).fetchone()
            return None if row is None else _row_to_delivery(row)

        return await self.write(run)

    async def list_webhook_attempts(
        self, endpoint_id: str, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeliveryAttempt]]:
        clause, args = where(("endpoint_id = ?", endpoint_id), (self.before("at"), before))
        args = self.unpack(args)
        sql = (
            f"SELECT at, position, {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE {clause}"
            " ORDER BY at DESC, position DESC LIMIT ?"
        )
        return await self.read(
            lambda conn: [(self.at(r), _row_to_attempt(r[2:])) for r in conn.execute(sql, (*args, limit))]
        )

    async def fail_pending(self, endpoint_id: str, reason: str) -> None:
        await self.write(lambda tx: fail_pending(tx.conn, endpoint_id, reason))

    async def forget_endpoint(self, endpoint_id: str) -> None:
        def run(tx: Transaction) -> None:
            tx.conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
            tx.conn.execute("DELETE FROM webhook_attempts WHERE endpoint_id = ?", (endpoint_id,))

        await self.write(run)

    async def claim_deliveries(
        self, now: datetime, limit: int, lease_until: datetime, first_delay: float = 0.0
    ) -> list[ClaimedDelivery]:
        now_us = to_us(now)
        first_due_us = to_us(now - timedelta(seconds=first_delay))
        sql = (
            "SELECT id, tenant, mode, endpoint_id, topic, payload, attempts, attempts - round_start"
            " FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?"
            " AND (attempts > round_start OR next_attempt_at <= ?)"
            " ORDER BY next_attempt_at, position LIMIT ?"
        )

        def due(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? LIMIT 1", (now_us,)
            ).fetchone()
            return row is not None

        def run(tx: Transaction) -> list[ClaimedDelivery]:
            rows = tx.conn.execute(sql, (now_us, first_due_us, limit)).fetchall()
            tx.conn.executemany(
                "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                [(to_us(lease_until), r[0]) for r in rows],
            )
            return [
                ClaimedDelivery(r[0], r[1], r[2], r[3], r[4], r[5].encode(), r[6], r[7], self.partition) for r in rows
            ]

        # Polling costs a read; only a claim that will find something takes the writer.
        if not await self.read(due):
            return []
        return await self.write(run)

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        attempt = outcome.attempt
        at_us = to_us(attempt.at)

        def run(tx: Transaction) -> None:
            # Normally the delivery is pending. It may have failed meanwhile (its endpoint was
            # disabled) or been delivered (by a worker that took over an expired claim): the
            # attempt is recorded all the same, and only a success changes a settled status.
            settle = "status = 'pending' OR ? = 'delivered'"
            cur = tx.conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, last_error = ?,"
                f" status = CASE WHEN {settle} THEN ? ELSE status END,"
                f" next_attempt_at = CASE WHEN {settle} THEN ? ELSE next_attempt_at END,"
                f" delivered_at = CASE WHEN {settle} THEN ? ELSE delivered_at END"
                " WHERE id = ?",
                (
                    attempt.status_code,
                    attempt.error,
                    outcome.status,
                    outcome.status,
                    outcome.status,
                    None if outcome.next_attempt_at is None else to_us(outcome.next_attempt_at),
                    outcome.status,
                    at_us if outcome.status == "delivered" else None,
                    attempt.delivery_id,
                ),
            )
            if not cur.rowcount:
                return  # deleted (with its endpoint) while it was being sent
            tx.conn.execute(
                f"INSERT OR IGNORE INTO webhook_attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.delivery_id,
                    attempt.endpoint_id,
                    attempt.attempt,
                    at_us,
                    attempt.status_code,
                    attempt.latency_ms,
                    attempt.error,
                ),
            )

        await self.write(run)

    # Facts and gamification

    async def fact_effects(self, fact_id: str) -> bytes | None:
        row = await self.read(
            lambda conn: conn.execute("SELECT effects FROM fact_effects WHERE fact_id = ?", (fact_id,)).fetchone()
        )
        return None if row is None else str(row[0]).encode()

    async def participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantState:
        scope = (tenant, mode, participant)

        def run(conn: sqlite3.Connection) -> ParticipantState:
            points = conn.execute(
                "SELECT points FROM points_totals WHERE tenant = ? AND mode = ? AND period = 'all_time'"
                " AND bucket = 0 AND participant_id = ?",
                scope,
            ).fetchone()
            badges = [
                BadgeAward(tenant, mode, participant, badge, from_us(at), reason, event_id)
                for badge, at, reason, event_id in conn.execute(
                    "SELECT badge, awarded_at, reason, event_id FROM badge_awards"
                    " WHERE tenant = ? AND mode = ? AND participant_id = ? ORDER BY awarded_at, badge",
                    scope,
                )
            ]
            # Challenge ids are unique across tenants; the caller keeps those of the tenant.
            challenges = [
                r[0]
                for r in conn.execute(
                    "SELECT k.challenge_id FROM challenge_keys k WHERE EXISTS (SELECT 1 FROM challenge_progress p"
                    " WHERE p.challenge = k.num AND p.participant_id = ?)",
                    (participant,),
                )
            ]
            return ParticipantState(None if points is None else int(points[0]), badges, challenges)

        return await self.read(run)

    async def progress_rows(self, challenge_id: str, participant: str, low: int, high: int) -> list[ProgressRow]:
        sql = (
            f"SELECT bucket, value, reached_at FROM challenge_progress WHERE challenge = {NUM} AND participant_id = ?"
            " AND bucket BETWEEN ? AND ? ORDER BY bucket"
        )
        return await self.read(
            lambda conn: [
                ProgressRow(b, float(v), from_us(r))
                for b, v, r in conn.execute(sql, (challenge_id, participant, low, high))
            ]
        )

    async def distinct_total(self, challenge_id: str, participant: str, low: int, high: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                f"SELECT count(DISTINCT value) FROM challenge_values WHERE challenge = {NUM} AND participant_id = ?"
                " AND bucket BETWEEN ? AND ?",
                (challenge_id, participant, low, high),
            ).fetchone()
            return int(row[0])

        return await self.read(run)

    async def list_completions(self, challenge_id: str, participant: str) -> list[Completion]:
        sql = (
            f"SELECT {COMPLETION_COLUMNS} FROM challenge_completions WHERE challenge_id = ? AND participant_id = ?"
            " ORDER BY period, completed_at, occurrence"
        )
        return await self.read(
            lambda conn: [_row_to_completion(r) for r in conn.execute(sql, (challenge_id, participant))]
        )

    async def points_board(
        self, tenant: str, mode: Mode, period: PointsPeriod, bucket: int, limit: int
    ) -> list[BoardRow]:
        sql = (
            "SELECT participant_id, points, reached_at FROM points_totals WHERE tenant = ? AND mode = ? AND period = ?"
            " AND bucket = ? ORDER BY points DESC, reached_at, participant_id LIMIT ?"
        )
        return await self.read(lambda conn: _board(conn.execute(sql, (tenant, mode, period, bucket, limit))))

    async def challenge_board(
        self, challenge_id: str, kind: BoardKind, low: int, high: int, limit: int
    ) -> list[BoardRow]:
        args: tuple[Any, ...]
        if kind == "streak":
            sql, args = STREAK_BOARD, (challenge_id, high, low, limit)
        else:
            table, value = ("challenge_values", "count(DISTINCT value)") if kind == "distinct" else (
                "challenge_progress", "sum(value)")  # fmt: skip
            sql = (
                f"SELECT participant_id, {value}, max(reached_at) FROM {table}"
                f" WHERE challenge = {NUM} AND bucket BETWEEN ? AND ? GROUP BY participant_id"
                " ORDER BY 2 DESC, 3, 1 LIMIT ?"
            )
            args = (challenge_id, low, high, limit)
        return await self.read(lambda conn: _board(conn.execute(sql, args)))
