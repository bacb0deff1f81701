"""Data protection in the main SQLite file: erasing events and quarantined items in bounded
passes, the retention policies, and the audit log of administrative changes.

An erasure pass is one write job, so it takes its turn on the writer between ingest's group
commits and holds the write lock for one bounded delete only. Dedup keys live in the events'
own index, so a deleted event's key goes with its row. The offset of the newest event deleted
is kept in `meta` (`erased_head`): `Transaction.next_seq` numbers on from there, since a
consumer's checkpoint may already be past an offset whose row is gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import EventDraft, Mode
from headwater.storage.log import ErasureQuery
from headwater.storage.records import AuditEntry, AuditValue, ErasedEvent
from headwater.storage.sqlite.core import SqliteCore, Transaction, where

PROTECTION_SCHEMA = """
-- Days a tenant keeps its events in a mode; no row: forever.
CREATE TABLE IF NOT EXISTS retention (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    days INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode)
);

-- Administrative changes, newest last (`position` orders them and is the list's cursor).
CREATE TABLE IF NOT EXISTS audit_log (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    summary TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_tenant ON audit_log (tenant, position);
"""

AUDIT_COLUMNS = "position, id, tenant, mode, key_id, action, resource_type, resource_id, summary, at"
# Record the newest erased offset, never lowering what is recorded.
RECORD_ERASED_HEAD = (
    "INSERT INTO meta (name, value) VALUES ('erased_head', ?) ON CONFLICT (name) DO UPDATE SET"
    " value = CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)"
)
_summary = msgspec.json.Decoder(dict[str, AuditValue])
_draft = msgspec.json.Decoder(EventDraft)
_encode = msgspec.json.encode


def erasure_filter(query: ErasureQuery, time_column: str, by_subject: bool) -> tuple[str, list[Any]]:
    return where(
        ("tenant = ?", query.tenant),
        ("mode = ?", query.mode),
        ("subject = ?", query.subject if by_subject else None),
        (f"{time_column} >= ?", None if query.time_from is None else to_us(query.time_from)),
        (f"{time_column} < ?", None if query.time_to is None else to_us(query.time_to)),
    )


def subject_needle(subject: str) -> str:
    """The text a draft of the subject holds (as msgspec encodes it): a cheap first filter, which
    the decoded draft then confirms (an item's data may hold the same text)."""
    return '"subject":' + _encode(subject).decode()


def drafts_of(rows: Sequence[tuple[str, str]], subject: str) -> list[str]:
    """The ids of the rows (id, draft) whose draft is the subject's."""
    return [id_ for id_, draft in rows if _draft.decode(draft).subject == subject]


def _erase_events(tx: Transaction, query: ErasureQuery) -> list[ErasedEvent]:
    clause, args = erasure_filter(query, "time", by_subject=True)
    # In the order of the index that selects them (time, seq): a pass reads `limit` entries of
    # it and sorts nothing, however many rows are left to erase.
    rows = tx.conn.execute(
        f"DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE {clause} ORDER BY time, seq LIMIT ?)"
        " RETURNING id, seq, partition, subject, type, coalesce(violations, '[]') != '[]'",
        (*args, query.limit),
    ).fetchall()
    if rows:
        tx.conn.execute(RECORD_ERASED_HEAD, (str(max(r[1] for r in rows)),))
    return [ErasedEvent(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in sorted(rows, key=lambda r: r[1])]


def _erase_quarantine(tx: Transaction, query: ErasureQuery) -> int:
    clause, args = erasure_filter(query, "received_at", by_subject=False)
    if query.subject is None:
        cur = tx.conn.execute(
            f"DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE {clause} LIMIT ?)",
            (*args, query.limit),
        )
        return cur.rowcount
    rows = tx.conn.execute(
        f"SELECT id, draft FROM quarantine WHERE {clause} AND instr(draft, ?) > 0",
        (*args, subject_needle(query.subject)),
    ).fetchall()
    ids = drafts_of(rows, query.subject)[: query.limit]
    if ids:
        tx.conn.execute("DELETE FROM quarantine WHERE id IN (SELECT value FROM json_each(?))", (_encode(ids),))
    return len(ids)


def _row_to_audit(row: tuple[Any, ...]) -> tuple[int, AuditEntry]:
    position, id_, tenant, mode, key_id, action, resource_type, resource_id, summary, at = row
    values = _summary.decode(summary)
    return position, AuditEntry(id_, tenant, mode, key_id, action, resource_type, resource_id, values, from_us(at))


class ProtectionTables(SqliteCore):
    SCHEMA = PROTECTION_SCHEMA

    # Erasure

    async def erase_events(self, query: ErasureQuery) -> list[ErasedEvent]:
        return await self.write(lambda tx: _erase_events(tx, query), size=query.limit)

    async def erase_quarantine(self, query: ErasureQuery) -> int:
        return await self.write(lambda tx: _erase_quarantine(tx, query), size=query.limit)

    # Retention

    async def get_retention(self, tenant: str, mode: Mode) -> int | None:
        sql = "SELECT days FROM retention WHERE tenant = ? AND mode = ?"
        row = await self.read(lambda conn: conn.execute(sql, (tenant, mode)).fetchone())
        return None if row is None else int(row[0])

    async def put_retention(self, tenant: str, mode: Mode, days: int | None, at: datetime) -> None:
        def run(tx: Transaction) -> None:
            if days is None:
                tx.conn.execute("DELETE FROM retention WHERE tenant = ? AND mode = ?", (tenant, mode))
                return
            tx.conn.execute(
                "INSERT INTO retention VALUES (?, ?, ?, ?) ON CONFLICT (tenant, mode) DO UPDATE SET"
                " days = excluded.days, updated_at = excluded.updated_at",
                (tenant, mode, days, to_us(at)),
            )

        await self.write(run)

    async def retention_policies(self) -> list[tuple[str, Mode, int]]:
        sql = "SELECT tenant, mode, days FROM retention ORDER BY tenant, mode"
        return await self.read(lambda conn: [(t, m, int(d)) for t, m, d in conn.execute(sql)])

    # The audit log

    async def add_audit(self, entry: AuditEntry) -> None:
        row = (
            entry.id,
            entry.tenant,
            entry.mode,
            entry.key_id,
            entry.action,
            entry.resource_type,
            entry.resource_id,
            _encode(entry.summary).decode(),
            to_us(entry.at),
        )
        await self.write(
            lambda tx: tx.conn.execute(f"INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (NULL,?,?,?,?,?,?,?,?,?)", row)
        )

    async def list_audit(
        self, tenant: str, modes: Sequence[Mode], before: int | None, limit: int
    ) -> list[tuple[int, AuditEntry]]:
        wanted = list(modes)
        clause = f"tenant = ? AND mode IN ({','.join('?' * len(wanted))})"
        clause += "" if before is None else " AND position < ?"
        sql = f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {clause} ORDER BY position DESC LIMIT ?"
        args = (tenant, *wanted, *([] if before is None else [before]), limit)

        def run(conn: sqlite3.Connection) -> list[tuple[int, AuditEntry]]:
            return [_row_to_audit(r) for r in conn.execute(sql, args)]

        return await self.read(run)
