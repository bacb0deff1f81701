"""A partition's derived state on PostgreSQL as the consumers use it: the bulk reads they plan
with (`PgState`, a `StateReads`) and the write of a batch's effects (`write_effects`).

Both take the schema their tables are in: "" for the live tables, the rebuild's schema for
the fresh ones (`rebuild`). Each kind of state is one statement however many keys a batch
has: the keys go in as arrays, `unnest`ed into rows, each looked up in the table's key. The
look-up is a LATERAL subquery behind `OFFSET 0`, so that it is an index probe per key whatever
the statistics say: as a plain join, a table the statistics call small (a new one, or one
grown since autovacuum last looked) got a hash or merge join over a scan of the whole table,
each batch, at 230 ms against 33 ms for 7,500 keys on 180,000 progress rows.
Rows keyed by subject are read without their partition: a subject lives in one partition.
Rows that have a `position` take it in the order of the batch (`unnest` keeps the arrays' order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.effects import Effects, NewDelivery, WindowPoint
from headwater.storage.postgres.core import PgCore
from headwater.storage.records import Completion, ProgressRange, ProgressValue

ScopedSubject = tuple[str, Mode, str]
_encode = msgspec.json.encode


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column, for `unnest($1::t[], $2::u[], ...)`."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def last_by(rows: Iterable[Any], key: Any) -> list[Any]:
    """The last row of each key, in first-seen order: an upsert of the same key twice in one
    statement is an error in PostgreSQL, and the last write is what one by one would leave."""
    found: dict[Any, Any] = {}
    for row in rows:
        found[key(row)] = row
    return list(found.values())


class PgState:
    """`StateReads` on the tables of `schema` ("" or "<name>.")."""

    def __init__(self, core: PgCore, schema: str = "") -> None:
        self.core = core
        self.ns = schema

    async def window_points(self, pairs: Sequence[tuple[str, str]]) -> list[WindowPoint]:
        if not pairs:
            return []
        rows = await self.core.fetch(
            "SELECT t.trigger_id, t.subject, t.event_id, t.time, t.value"
            " FROM unnest($1::text[], $2::text[]) AS w(trigger_id, subject) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}trigger_windows t WHERE t.trigger_id = w.trigger_id AND t.subject = w.subject"
            " OFFSET 0) AS t"
            ' ORDER BY t.trigger_id COLLATE "C", t.subject COLLATE "C", t.event_id COLLATE "C"',
            *columns(sorted(set(pairs)), 2),
        )
        return [WindowPoint(*row) for row in rows]

    async def firings(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[str, str, int, str]]:
        if not ranges:
            return []
        rows = await self.core.fetch(
            "SELECT w.trigger_id, w.subject, a.event_time, a.id"
            " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS w(trigger_id, subject, low, high)"
            f" CROSS JOIN LATERAL (SELECT * FROM {self.ns}actions a WHERE a.trigger_id = w.trigger_id"
            " AND a.subject = w.subject AND a.event_time > w.low AND a.event_time <= w.high OFFSET 0) AS a"
            " WHERE a.status <> 'failed'",
            *columns(ranges, 4),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def existing_actions(self, action_ids: Sequence[str]) -> set[str]:
        if not action_ids:
            return set()
        rows = await self.core.fetch(
            f"SELECT id FROM {self.ns}actions WHERE id = ANY($1::text[])", list(set(action_ids))
        )
        return {row[0] for row in rows}

    async def active_enrollments(
        self, keys: Sequence[tuple[str, Mode, str, str]]
    ) -> list[tuple[str, Mode, str, str, str]]:
        if not keys:
            return []
        rows = await self.core.fetch(
            "SELECT n.tenant, n.mode, n.journey_id, n.subject, n.id"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS w(tenant, mode, journey_id, subject)"
            f" CROSS JOIN LATERAL (SELECT * FROM {self.ns}enrollments n WHERE n.tenant = w.tenant AND n.mode = w.mode"
            " AND n.journey_id = w.journey_id AND n.subject = w.subject OFFSET 0) AS n"
            " WHERE n.status = 'active' ORDER BY n.enrolled_at, n.position",
            *columns(sorted(set(keys)), 4),
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def profiles(self, keys: Sequence[ScopedSubject]) -> dict[ScopedSubject, dict[str, Any]]:
        if not keys:
            return {}
        rows = await self.core.fetch(
            "SELECT p.tenant, p.mode, p.subject, p.attributes"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS w(tenant, mode, subject) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}profiles p WHERE p.tenant = w.tenant AND p.mode = w.mode"
            " AND p.subject = w.subject OFFSET 0) AS p",
            *columns(sorted(set(keys)), 3),
        )
        return {(t, m, s): msgspec.json.decode(attributes) for t, m, s, attributes in rows}

    async def progress(self, ranges: Sequence[ProgressRange]) -> list[ProgressValue]:
        if not ranges:
            return []
        rows = await self.core.fetch(
            "SELECT p.challenge_id, p.participant_id, p.bucket, p.value, p.reached_at, p.seq"
            " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
            " AS w(challenge_id, participant_id, low, high) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}challenge_progress p WHERE p.challenge_id = w.challenge_id"
            " AND p.participant_id = w.participant_id AND p.bucket BETWEEN w.low AND w.high OFFSET 0) AS p",
            *columns(ranges, 4),
        )
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def distinct_values(self, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
        if not ranges:
            return []
        rows = await self.core.fetch(
            "SELECT v.challenge_id, v.participant_id, v.bucket, v.value"
            " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])"
            " AS w(challenge_id, participant_id, low, high) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}challenge_values v WHERE v.challenge_id = w.challenge_id"
            " AND v.participant_id = w.participant_id AND v.bucket BETWEEN w.low AND w.high OFFSET 0) AS v",
            *columns(ranges, 4),
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def completions(self, pairs: Sequence[tuple[str, str]]) -> list[Completion]:
        if not pairs:
            return []
        rows = await self.core.fetch(
            "SELECT c.tenant, c.mode, c.challenge_id, c.participant_id, c.occurrence, c.period, c.completed_at,"
            " c.event_id FROM unnest($1::text[], $2::text[]) AS w(challenge_id, participant_id) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}challenge_completions c WHERE c.challenge_id = w.challenge_id"
            " AND c.participant_id = w.participant_id OFFSET 0) AS c",
            *columns(sorted(set(pairs)), 2),
        )
        return [Completion(t, m, c, p, o, period, from_us(at), e) for t, m, c, p, o, period, at, e in rows]

    async def held_badges(self, keys: Sequence[ScopedSubject]) -> set[tuple[str, Mode, str, str]]:
        if not keys:
            return set()
        rows = await self.core.fetch(
            "SELECT b.tenant, b.mode, b.participant_id, b.badge"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS w(tenant, mode, participant_id) CROSS JOIN LATERAL"
            f" (SELECT * FROM {self.ns}badge_awards b WHERE b.tenant = w.tenant AND b.mode = w.mode"
            " AND b.participant_id = w.participant_id OFFSET 0) AS b",
            *columns(sorted(set(keys)), 3),
        )
        return {(r[0], r[1], r[2], r[3]) for r in rows}


# Writes. Rows unique by their nature are inserted with ON CONFLICT DO NOTHING, so a second
# write of the same row changes nothing (see `storage.effects`).


async def write_deliveries(conn: asyncpg.Connection, rows: Sequence[tuple[int, NewDelivery]], ns: str = "") -> None:
    """(partition, delivery) rows into the outbox."""
    if not rows:
        return
    values = [
        (p, d.id, d.tenant, d.mode, d.endpoint_id, d.topic, d.message_key, d.payload.decode(), to_us(d.at))
        for p, d in rows
    ]
    await conn.execute(
        f"INSERT INTO {ns}webhook_deliveries (partition, id, tenant, mode, endpoint_id, topic, message_key,"
        " payload, status, next_attempt_at, created_at)"
        " SELECT p, id, tenant, mode, endpoint_id, topic, message_key, payload, 'pending', at, at"
        " FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
        " $8::text[], $9::bigint[]) AS d(p, id, tenant, mode, endpoint_id, topic, message_key, payload, at)"
        " ON CONFLICT (id) DO NOTHING",
        *columns(values, 9),
    )


async def write_effects(conn: asyncpg.Connection, partition: int, e: Effects, ns: str = "") -> None:
    """Write a batch's effects on `conn`, inside its transaction. The tables are written in
    `REBUILT_TABLES`' order (see there)."""
    await _write_triggers(conn, partition, e, ns)
    if e.deliveries:
        await write_deliveries(conn, [(partition, d) for d in e.deliveries], ns)
    await _write_gamification(conn, e, ns)
    if e.catalog:
        await conn.executemany(
            f"INSERT INTO {ns}catalog AS c (tenant, mode, type, count, first_seen, last_seen, violations)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, mode, type) DO UPDATE SET"
            " count = c.count + excluded.count, first_seen = least(c.first_seen, excluded.first_seen),"
            " last_seen = greatest(c.last_seen, excluded.last_seen), violations = c.violations + excluded.violations",
            e.catalog,
        )
    if e.properties:
        await conn.execute(
            f"INSERT INTO {ns}catalog_properties"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
            " ON CONFLICT DO NOTHING",
            *columns(e.properties, 5),
        )


async def _write_triggers(conn: asyncpg.Connection, partition: int, e: Effects, ns: str) -> None:
    rows: list[tuple[Any, ...]]
    if e.window_points:
        await conn.execute(
            f"INSERT INTO {ns}trigger_windows SELECT * FROM"
            " unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[]) ON CONFLICT DO NOTHING",
            *columns(e.window_points, 5),
        )
    if e.window_deletes:
        await conn.execute(
            f"DELETE FROM {ns}trigger_windows t USING unnest($1::text[], $2::text[], $3::text[])"
            " AS d(trigger_id, subject, event_id)"
            " WHERE t.trigger_id = d.trigger_id AND t.subject = d.subject AND t.event_id = d.event_id",
            *columns(e.window_deletes, 3),
        )
    if e.actions:
        rows = [
            (
                a.id, a.tenant, a.mode, a.trigger_id, a.trigger_name, a.event_id, a.event_type, a.subject, a.type,
                bytes(a.config).decode(), a.status, a.priority, to_us(a.event_time), to_us(a.created_at), a.error,
                None if a.result is None else bytes(a.result).decode(),
            )
            for a in e.actions
        ]  # fmt: skip
        await conn.execute(
            f"INSERT INTO {ns}actions (partition, id, tenant, mode, trigger_id, trigger_name, event_id, event_type,"
            " subject, type, config, status, priority, event_time, created_at, error, result)"
            " SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
            " $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int[], $14::bigint[],"
            " $15::bigint[], $16::text[], $17::text[]) ON CONFLICT (id) DO NOTHING",
            partition,
            *columns(rows, 16),
        )
    if e.enrollments:
        rows = [
            (n.id, n.tenant, n.mode, n.journey_id, n.subject, n.action_id, to_us(n.enrolled_at)) for n in e.enrollments
        ]
        await conn.execute(
            f"INSERT INTO {ns}enrollments (partition, id, tenant, mode, journey_id, subject, status, action_id,"
            " enrolled_at) SELECT $1, n.id, n.tenant, n.mode, n.journey_id, n.subject, 'active', n.action_id,"
            " n.enrolled_at FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
            " $8::bigint[]) AS n(id, tenant, mode, journey_id, subject, action_id, enrolled_at)"
            " ON CONFLICT DO NOTHING",
            partition,
            *columns(rows, 7),
        )
    if e.ended_enrollments:  # after the new ones: a batch may end an enrolment it made
        await conn.execute(
            f"UPDATE {ns}enrollments SET status = 'restarted' WHERE id = ANY($1::text[])", e.ended_enrollments
        )
    if e.profiles:
        rows = [
            (p.tenant, p.mode, p.subject, _encode(p.attributes).decode(), to_us(p.updated_at))
            for p in last_by(e.profiles, lambda p: (p.tenant, p.mode, p.subject))
        ]
        await conn.execute(
            f"INSERT INTO {ns}profiles SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[]) ON CONFLICT (tenant, mode, subject) DO UPDATE SET"
            " attributes = excluded.attributes, updated_at = excluded.updated_at",
            *columns(rows, 5),
        )


async def _write_gamification(conn: asyncpg.Connection, e: Effects, ns: str) -> None:
    rows: list[tuple[Any, ...]]
    if e.progress:
        await conn.execute(
            f"INSERT INTO {ns}challenge_progress SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[],"
            " $4::float8[], $5::bigint[], $6::bigint[]) ON CONFLICT (challenge_id, participant_id, bucket)"
            " DO UPDATE SET value = excluded.value, reached_at = excluded.reached_at, seq = excluded.seq",
            *columns(last_by(e.progress, lambda r: (r[0], r[1], r[2])), 6),
        )
    if e.values:
        await conn.execute(
            f"INSERT INTO {ns}challenge_values SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[],"
            " $4::text[], $5::bigint[]) ON CONFLICT DO NOTHING",
            *columns(e.values, 5),
        )
    if e.completions:
        rows = [
            (c.challenge_id, c.participant_id, c.occurrence, c.tenant, c.mode, c.period, to_us(c.completed_at),
             c.event_id)
            for c in e.completions
        ]  # fmt: skip
        await conn.execute(
            f"INSERT INTO {ns}challenge_completions SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::text[]) ON CONFLICT DO NOTHING",
            *columns(rows, 8),
        )
    if e.badges:
        rows = [
            (a.tenant, a.mode, a.participant_id, a.badge, to_us(a.awarded_at), a.reason, a.event_id) for a in e.badges
        ]
        await conn.execute(
            f"INSERT INTO {ns}badge_awards SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[], $6::text[], $7::text[]) ON CONFLICT DO NOTHING",
            *columns(rows, 7),
        )
    if e.points:
        await _write_points(conn, e, ns)
    if e.fact_effects:
        await conn.execute(
            f"INSERT INTO {ns}fact_effects SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT (fact_id) DO UPDATE SET effects = excluded.effects",
            *columns([(f, raw.decode()) for f, raw in last_by(e.fact_effects, lambda r: r[0])], 2),
        )


async def _write_points(conn: asyncpg.Connection, e: Effects, ns: str) -> None:
    """The ledger lines, and the totals of only the lines this write made: a repeated cause
    adds nothing. One statement: the totals join what the ledger's insert returned."""
    entries = [
        (p.id, p.tenant, p.mode, p.participant_id, p.points, p.reason, p.event_id, to_us(p.at)) for p in e.points
    ]
    buckets = sorted({(p.id, period, bucket) for p in e.points for period, bucket in p.buckets})
    await conn.execute(
        f"WITH made AS (INSERT INTO {ns}points_ledger SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::text[], $5::bigint[], $6::text[], $7::text[], $8::bigint[]) ON CONFLICT (id) DO NOTHING"
        " RETURNING id, tenant, mode, participant_id, points, at)"
        f" INSERT INTO {ns}points_totals AS t (tenant, mode, period, bucket, participant_id, points, reached_at)"
        " SELECT m.tenant, m.mode, b.period, b.bucket, m.participant_id, sum(m.points), max(m.at)"
        " FROM made m JOIN unnest($9::text[], $10::text[], $11::bigint[]) AS b(id, period, bucket) ON b.id = m.id"
        " GROUP BY m.tenant, m.mode, b.period, b.bucket, m.participant_id"
        " ON CONFLICT (tenant, mode, period, bucket, participant_id) DO UPDATE SET"
        " points = t.points + excluded.points, reached_at = greatest(t.reached_at, excluded.reached_at)",
        *columns(entries, 8),
        *columns(buckets, 3),
    )
