"""Data protection on PostgreSQL: erasing events and quarantined items in bounded passes, the
derived rows that hang off them, the retention policies, and the audit log.

As on SQLite (`sqlite.protection`): a pass is one transaction of at most `limit` events, a
deleted event's dedup key goes with its row, and the newest offset erased is kept in `meta`
(`erased_head`) for the sequencer to number on from. An erasure takes no sequencer lock: an
append that read the highest offset before the erasure committed saw the row, one that read it
after sees `erased_head`, and both are one statement's snapshot (`log.HIGHEST_OFFSET`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.ids import fact_id_for
from headwater.storage.log import ErasureQuery
from headwater.storage.postgres.core import PgCore
from headwater.storage.records import WHOLE_LOG, AuditEntry, AuditValue, ErasedEvent, ErasureCounts, catalog_uncounts
from headwater.storage.sqlite.protection import drafts_of, subject_needle

AUDIT_COLUMNS = "position, id, tenant, mode, key_id, action, resource_type, resource_id, summary, at"
RECORD_ERASED_HEAD = (
    "INSERT INTO meta (name, value) VALUES ('erased_head', $1) ON CONFLICT (name) DO UPDATE"
    " SET value = greatest(meta.value::bigint, excluded.value::bigint)::text"
)
_summary = msgspec.json.Decoder(dict[str, AuditValue])
_encode = msgspec.json.encode


def _filter(query: ErasureQuery, time_column: str, by_subject: bool) -> tuple[str, list[Any]]:
    where = ["tenant = $1", "mode = $2"]
    args: list[Any] = [query.tenant, query.mode]
    for condition, value in (
        ("subject = ${}", query.subject.encode() if by_subject and query.subject is not None else None),
        (f"{time_column} >= ${{}}", None if query.time_from is None else to_us(query.time_from)),
        (f"{time_column} < ${{}}", None if query.time_to is None else to_us(query.time_to)),
    ):
        if value is not None:
            args.append(value)
            where.append(condition.format(len(args)))
    return " AND ".join(where), args


class PgLogErasure:
    core: PgCore

    async def erase_events(self, query: ErasureQuery) -> list[ErasedEvent]:
        clause, args = _filter(query, "time", by_subject=True)
        sql = (
            f"WITH doomed AS (SELECT seq FROM events WHERE {clause} ORDER BY time, seq LIMIT ${len(args) + 1})"
            " DELETE FROM events e USING doomed WHERE e.seq = doomed.seq RETURNING e.id, e.seq, e.partition, e.subject,"
            " e.type, coalesce(e.violations, '[]') <> '[]'"
        )
        async with self.core.transaction() as conn:
            rows = await conn.fetch(sql, *args, query.limit)
            if rows:
                await conn.execute(RECORD_ERASED_HEAD, str(max(r[1] for r in rows)))
        erased = [
            ErasedEvent(r[0], r[1], r[2], None if r[3] is None else bytes(r[3]).decode(), bytes(r[4]).decode(), r[5])
            for r in rows
        ]
        return sorted(erased, key=lambda e: e.seq)

    async def erase_quarantine(self, query: ErasureQuery) -> int:
        clause, args = _filter(query, "received_at", by_subject=False)
        async with self.core.transaction() as conn:
            if query.subject is None:
                status = await conn.execute(
                    f"DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE {clause}"
                    f" LIMIT ${len(args) + 1})",
                    *args,
                    query.limit,
                )
                return int(status.split()[-1])
            rows = await conn.fetch(
                f"SELECT id, draft FROM quarantine WHERE {clause} AND strpos(draft, ${len(args) + 1}) > 0",
                *args,
                subject_needle(query.subject),
            )
            ids = drafts_of([(r[0], r[1]) for r in rows], query.subject)[: query.limit]
            if ids:
                await conn.execute("DELETE FROM quarantine WHERE id = ANY($1::text[])", ids)
            return len(ids)


def _row_to_audit(row: asyncpg.Record) -> tuple[int, AuditEntry]:
    position, id_, tenant, mode, key_id, action, resource_type, resource_id, summary, at = row
    resource = None if resource_id is None else bytes(resource_id).decode()
    return position, AuditEntry(
        id_, tenant, mode, key_id, action, resource_type, resource, _summary.decode(summary), from_us(at)
    )


class PgRegistryProtection:
    core: PgCore

    async def get_retention(self, tenant: str, mode: Mode) -> int | None:
        days = await self.core.fetchval("SELECT days FROM retention WHERE tenant = $1 AND mode = $2", tenant, mode)
        return None if days is None else int(days)

    async def put_retention(self, tenant: str, mode: Mode, days: int | None, at: datetime) -> None:
        if days is None:
            await self.core.execute("DELETE FROM retention WHERE tenant = $1 AND mode = $2", tenant, mode)
            return
        await self.core.execute(
            "INSERT INTO retention (tenant, mode, days, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant, mode) DO UPDATE SET days = excluded.days, updated_at = excluded.updated_at",
            tenant,
            mode,
            days,
            to_us(at),
        )

    async def retention_policies(self) -> list[tuple[str, Mode, int]]:
        rows = await self.core.fetch("SELECT tenant, mode, days FROM retention ORDER BY tenant, mode")
        return [(t, m, int(d)) for t, m, d in rows]

    async def add_audit(self, entry: AuditEntry) -> None:
        await self.core.execute(
            "INSERT INTO audit_log (id, tenant, mode, key_id, action, resource_type, resource_id, summary, at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            entry.id,
            entry.tenant,
            entry.mode,
            entry.key_id,
            entry.action,
            entry.resource_type,
            None if entry.resource_id is None else entry.resource_id.encode(),
            _encode(entry.summary).decode(),
            to_us(entry.at),
        )

    async def list_audit(
        self, tenant: str, modes: Sequence[Mode], before: int | None, limit: int
    ) -> list[tuple[int, AuditEntry]]:
        rows = await self.core.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant = $1 AND mode = ANY($2::text[])"
            " AND ($3::bigint IS NULL OR position < $3) ORDER BY position DESC LIMIT $4",
            tenant,
            list(modes),
            before,
            limit,
        )
        return [_row_to_audit(r) for r in rows]


def _deleted(status: str) -> int:
    return int(status.split()[-1])


async def _forget_actions(conn: asyncpg.Connection, action_ids: list[str], message_keys: list[str]) -> ErasureCounts:
    counts = ErasureCounts()
    counts.attempts = _deleted(
        await conn.execute(
            "DELETE FROM webhook_attempts WHERE delivery_id IN"
            " (SELECT id FROM webhook_deliveries WHERE message_key = ANY($1::text[]))",
            message_keys,
        )
    )
    counts.deliveries = _deleted(
        await conn.execute("DELETE FROM webhook_deliveries WHERE message_key = ANY($1::text[])", message_keys)
    )
    counts.enrollments = _deleted(
        await conn.execute("DELETE FROM enrollments WHERE action_id = ANY($1::text[])", action_ids)
    )
    counts.actions = _deleted(await conn.execute("DELETE FROM actions WHERE id = ANY($1::text[])", action_ids))
    return counts


class PgDerivedErasure:
    core: PgCore

    async def forget_events(
        self, partition: int, tenant: str, mode: Mode, events: Sequence[ErasedEvent], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        ids = [e.id for e in events]
        # A text column holds no NUL: no derived row is of a subject that has one.
        subjects = sorted({e.subject for e in events if e.subject is not None and "\x00" not in e.subject})
        async with self.core.transaction() as conn:
            action_ids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT id FROM actions WHERE event_id = ANY($1::text[]) AND tenant = $2 AND mode = $3",
                    ids,
                    tenant,
                    mode,
                )
            ]
            counts = await _forget_actions(conn, action_ids, [*ids, *action_ids])
            counts.fact_effects = _deleted(
                await conn.execute(
                    "DELETE FROM fact_effects WHERE fact_id = ANY($1::text[])", [fact_id_for(i) for i in ids]
                )
            )
            counts.window_points = _deleted(
                await conn.execute(
                    "DELETE FROM trigger_windows WHERE trigger_id = ANY($1::text[]) AND subject = ANY($2::text[])"
                    " AND event_id = ANY($3::text[])",
                    list(trigger_ids),
                    subjects,
                    ids,
                )
            )
            counts.dead_letters = _deleted(
                await conn.execute(
                    "DELETE FROM dead_letters WHERE partition = $1 AND tenant = $2 AND mode = $3"
                    " AND event_id = ANY($4::text[])",
                    partition,
                    tenant,
                    mode,
                    ids,
                )
            )
        return counts

    async def forget_subject(
        self, tenant: str, mode: Mode, subject: str, challenge_ids: Sequence[str], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        if "\x00" in subject:  # no derived row holds one (a text column cannot)
            return ErasureCounts()
        scope = (tenant, mode, subject)
        participant = "tenant = $1 AND mode = $2 AND participant_id = $3"
        async with self.core.transaction() as conn:
            sql = "SELECT id FROM actions WHERE tenant = $1 AND mode = $2 AND subject = $3"
            action_ids = [r[0] for r in await conn.fetch(sql, *scope)]
            counts = await _forget_actions(conn, action_ids, action_ids)
            counts.enrollments += _deleted(
                await conn.execute("DELETE FROM enrollments WHERE tenant = $1 AND mode = $2 AND subject = $3", *scope)
            )
            counts.profiles = _deleted(
                await conn.execute("DELETE FROM profiles WHERE tenant = $1 AND mode = $2 AND subject = $3", *scope)
            )
            counts.window_points = _deleted(
                await conn.execute(
                    "DELETE FROM trigger_windows WHERE trigger_id = ANY($1::text[]) AND subject = $2",
                    list(trigger_ids),
                    subject,
                )
            )
            for table in ("challenge_progress", "challenge_values"):
                counts.progress += _deleted(
                    await conn.execute(
                        f"DELETE FROM {table} WHERE challenge_id = ANY($1::text[]) AND participant_id = $2",
                        list(challenge_ids),
                        subject,
                    )
                )
            counts.completions = _deleted(
                await conn.execute(f"DELETE FROM challenge_completions WHERE {participant}", *scope)
            )
            counts.badges = _deleted(await conn.execute(f"DELETE FROM badge_awards WHERE {participant}", *scope))
            counts.points = _deleted(await conn.execute(f"DELETE FROM points_ledger WHERE {participant}", *scope))
            await conn.execute(f"DELETE FROM points_totals WHERE {participant}", *scope)
        return counts

    async def uncount(self, consumer: str, tenant: str, mode: Mode, events: Sequence[ErasedEvent]) -> None:
        async with self.core.transaction() as conn:
            # The checkpoint's row, locked: a fold waits for this transaction, then folds on the
            # counts as they are now (it never read an erased event it had not read before).
            folded_to = await conn.fetchval(
                "SELECT seq FROM checkpoints WHERE consumer = $1 AND partition = $2 FOR UPDATE", consumer, WHOLE_LOG
            )
            changes = catalog_uncounts(events, folded_to or 0)
            if changes:
                await conn.executemany(
                    "UPDATE catalog SET count = count - $1, violations = greatest(0, violations - $2)"
                    " WHERE tenant = $3 AND mode = $4 AND type = $5",
                    [(count, flagged, tenant, mode, type_) for count, flagged, type_ in changes],
                )
            emptied = await conn.fetch(
                "DELETE FROM catalog WHERE tenant = $1 AND mode = $2 AND count <= 0 RETURNING type", tenant, mode
            )
            await conn.execute(
                "DELETE FROM catalog_properties WHERE tenant = $1 AND mode = $2 AND type = ANY($3::text[])",
                tenant,
                mode,
                [r[0] for r in emptied],
            )
