"""Erasure in the derived state on SQLite: the deletes of `DerivedState.forget_events` and
`forget_subject`, each one transaction of the partition's file (a subject lives in one).

Every delete is one statement over a list of keys (passed as one JSON array, read with
`json_each`), so a pass costs a handful of statements however many rows it deletes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from headwater.events import Mode
from headwater.ids import fact_id_for
from headwater.partitions import partition_of
from headwater.storage.records import WHOLE_LOG, ErasedEvent, ErasureCounts, catalog_uncounts
from headwater.storage.sqlite.partition import PartitionFile
from headwater.storage.sqlite.shared import SharedFile

_encode = msgspec.json.encode
IN_LIST = "(SELECT value FROM json_each(?))"


def _forget_actions(conn: sqlite3.Connection, action_ids: list[str], message_keys: list[str]) -> ErasureCounts:
    """The actions, their enrolments, and the messages (with attempts) of the keys."""
    counts = ErasureCounts()
    keys = _encode(message_keys)
    counts.attempts = conn.execute(
        f"DELETE FROM webhook_attempts WHERE delivery_id IN"
        f" (SELECT id FROM webhook_deliveries WHERE message_key IN {IN_LIST})",
        (keys,),
    ).rowcount
    counts.deliveries = conn.execute(f"DELETE FROM webhook_deliveries WHERE message_key IN {IN_LIST}", (keys,)).rowcount
    acts = _encode(action_ids)
    counts.enrollments = conn.execute(f"DELETE FROM enrollments WHERE action_id IN {IN_LIST}", (acts,)).rowcount
    counts.actions = conn.execute(f"DELETE FROM actions WHERE id IN {IN_LIST}", (acts,)).rowcount
    return counts


def forget_events(
    conn: sqlite3.Connection, tenant: str, mode: Mode, events: Sequence[ErasedEvent], trigger_ids: Sequence[str]
) -> ErasureCounts:
    ids = [e.id for e in events]
    sql = f"SELECT id FROM actions WHERE event_id IN {IN_LIST} AND tenant = ? AND mode = ?"
    action_ids = [row[0] for row in conn.execute(sql, (_encode(ids), tenant, mode))]
    counts = _forget_actions(conn, action_ids, [*ids, *action_ids])
    counts.fact_effects = conn.execute(
        f"DELETE FROM fact_effects WHERE fact_id IN {IN_LIST}", (_encode([fact_id_for(i) for i in ids]),)
    ).rowcount
    subjects = sorted({e.subject for e in events if e.subject is not None})
    counts.window_points = conn.execute(
        f"DELETE FROM trigger_windows WHERE trigger_id IN {IN_LIST} AND subject IN {IN_LIST} AND event_id IN {IN_LIST}",
        (_encode(list(trigger_ids)), _encode(subjects), _encode(ids)),
    ).rowcount
    sql = f"DELETE FROM dead_letters WHERE tenant = ? AND mode = ? AND event_id IN {IN_LIST}"
    counts.dead_letters = conn.execute(sql, (tenant, mode, _encode(ids))).rowcount
    return counts


def forget_subject(
    conn: sqlite3.Connection,
    tenant: str,
    mode: Mode,
    subject: str,
    challenge_ids: Sequence[str],
    trigger_ids: Sequence[str],
) -> ErasureCounts:
    scope = (tenant, mode, subject)
    action_ids = [
        r[0] for r in conn.execute("SELECT id FROM actions WHERE tenant = ? AND mode = ? AND subject = ?", scope)
    ]
    counts = _forget_actions(conn, action_ids, action_ids)
    counts.enrollments += conn.execute(
        "DELETE FROM enrollments WHERE tenant = ? AND mode = ? AND subject = ?", scope
    ).rowcount
    counts.profiles = conn.execute("DELETE FROM profiles WHERE tenant = ? AND mode = ? AND subject = ?", scope).rowcount
    counts.window_points = conn.execute(
        f"DELETE FROM trigger_windows WHERE trigger_id IN {IN_LIST} AND subject = ?",
        (_encode(list(trigger_ids)), subject),
    ).rowcount
    nums = f"(SELECT num FROM challenge_keys WHERE challenge_id IN {IN_LIST})"
    challenges = _encode(list(challenge_ids))
    for table in ("challenge_progress", "challenge_values"):
        counts.progress += conn.execute(
            f"DELETE FROM {table} WHERE challenge IN {nums} AND participant_id = ?", (challenges, subject)
        ).rowcount
    participant = "tenant = ? AND mode = ? AND participant_id = ?"
    counts.completions = conn.execute(f"DELETE FROM challenge_completions WHERE {participant}", scope).rowcount
    counts.badges = conn.execute(f"DELETE FROM badge_awards WHERE {participant}", scope).rowcount
    counts.points = conn.execute(f"DELETE FROM points_ledger WHERE {participant}", scope).rowcount
    conn.execute(f"DELETE FROM points_totals WHERE {participant}", scope)
    return counts


def uncount(conn: sqlite3.Connection, consumer: str, tenant: str, mode: Mode, events: Sequence[ErasedEvent]) -> None:
    row = conn.execute(
        "SELECT seq FROM checkpoints WHERE consumer = ? AND partition = ?", (consumer, WHOLE_LOG)
    ).fetchone()
    changes = catalog_uncounts(events, row[0] if row else 0)
    conn.executemany(
        "UPDATE catalog SET count = count - ?, violations = max(0, violations - ?)"
        " WHERE tenant = ? AND mode = ? AND type = ?",
        [(count, flagged, tenant, mode, type_) for count, flagged, type_ in changes],
    )
    emptied = conn.execute(
        "DELETE FROM catalog WHERE tenant = ? AND mode = ? AND count <= 0 RETURNING type", (tenant, mode)
    ).fetchall()
    conn.execute(
        f"DELETE FROM catalog_properties WHERE tenant = ? AND mode = ? AND type IN {IN_LIST}",
        (tenant, mode, _encode([r[0] for r in emptied])),
    )


class DerivedErasure:
    """`SqliteDerived`'s erasure methods: each one write of the partition's file (the catalog's:
    of the shared file)."""

    parts: list[PartitionFile]
    shared: SharedFile

    async def forget_events(
        self, partition: int, tenant: str, mode: Mode, events: Sequence[ErasedEvent], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        part = self.parts[partition]
        return await part.write(lambda tx: forget_events(tx.conn, tenant, mode, events, trigger_ids), len(events) or 1)

    async def forget_subject(
        self, tenant: str, mode: Mode, subject: str, challenge_ids: Sequence[str], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        part = self.parts[partition_of(tenant, mode, subject, len(self.parts))]
        return await part.write(lambda tx: forget_subject(tx.conn, tenant, mode, subject, challenge_ids, trigger_ids))

    async def uncount(self, consumer: str, tenant: str, mode: Mode, events: Sequence[ErasedEvent]) -> None:
        await self.shared.write(lambda tx: uncount(tx.conn, consumer, tenant, mode, events))
