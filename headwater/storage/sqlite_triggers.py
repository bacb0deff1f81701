"""Triggers, type mappings, rolling windows, action records, journeys and subject profiles on SQLite."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.derived import (
    ActionQuery,
    ActionRecord,
    ActionStatus,
    Enrollment,
    SubjectProfile,
    TriggerRecord,
)
from headwater.storage.sqlite_core import SqliteCore, Transaction, where
from headwater.storage.sqlite_definitions import DefinitionTable, ScopeSetting
from headwater.storage.sqlite_webhooks import enqueue_deliveries

TRIGGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS triggers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS triggers_scope ON triggers (tenant, mode, created_at);

CREATE TABLE IF NOT EXISTS type_mappings (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    mappings TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode)
);

-- Bumped on every change to a trigger or mapping, so every process can tell its cache is stale.
CREATE TABLE IF NOT EXISTS trigger_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS trigger_windows (
    trigger_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    event_id TEXT NOT NULL,
    time INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (trigger_id, subject, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trigger_windows_time ON trigger_windows (trigger_id, subject, time);

CREATE TABLE IF NOT EXISTS actions (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    trigger_id TEXT NOT NULL,
    trigger_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    event_time INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS actions_scope ON actions (tenant, mode, position);
CREATE INDEX IF NOT EXISTS actions_trigger ON actions (trigger_id, position);
CREATE INDEX IF NOT EXISTS actions_event ON actions (event_id);
CREATE INDEX IF NOT EXISTS actions_firing ON actions (trigger_id, subject, event_time);

CREATE TABLE IF NOT EXISTS enrollments (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    journey_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    action_id TEXT NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS enrollments_journey ON enrollments (tenant, mode, journey_id, subject, status);

CREATE TABLE IF NOT EXISTS profiles (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    subject TEXT NOT NULL,
    attributes TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, subject)
);

CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""

ACTION_COLUMNS = (
    "id, tenant, mode, trigger_id, trigger_name, event_id, event_type, subject, type, config, status,"
    " priority, event_time, created_at, error, result"
)
TRIGGERS = DefinitionTable("triggers", "trigger_changes", TriggerRecord)
TYPE_MAPPINGS = ScopeSetting("type_mappings", "mappings", "trigger_changes")
_encode = msgspec.json.encode


def _action_row(action: ActionRecord) -> tuple[Any, ...]:
    return (
        action.id,
        action.tenant,
        action.mode,
        action.trigger_id,
        action.trigger_name,
        action.event_id,
        action.event_type,
        action.subject,
        action.type,
        bytes(action.config).decode(),
        action.status,
        action.priority,
        to_us(action.event_time),
        to_us(action.created_at),
        action.error,
        None if action.result is None else bytes(action.result).decode(),
    )


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


def enrollment_id(action_id: str) -> str:
    """Derived from the action that enrolled (one enrolment per action), so a replay of the
    log rebuilds the same ids."""
    return "enr_" + hashlib.sha256(action_id.encode()).hexdigest()[:32]


class SqliteProcessingState:
    """The trigger part of `ProcessingState` on the writer's connection, inside the group
    transaction; `sqlite.SqliteState` adds the rest and is what `Store.process` passes."""

    def __init__(self, tx: Transaction) -> None:
        self.conn = tx.conn

    def checkpoint(self, consumer: str) -> int:
        row = self.conn.execute("SELECT seq FROM checkpoints WHERE consumer = ?", (consumer,)).fetchone()
        return int(row[0]) if row else 0

    def set_checkpoint(self, consumer: str, seq: int) -> None:
        self.conn.execute(
            "INSERT INTO checkpoints VALUES (?, ?) ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
            (consumer, seq),
        )

    def window_add(self, trigger_id: str, subject: str, event_id: str, at_us: int, value: float) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO trigger_windows VALUES (?, ?, ?, ?, ?)",
            (trigger_id, subject, event_id, at_us, value),
        )

    def window_totals(self, trigger_id: str, subject: str, start_us: int, end_us: int) -> tuple[int, float]:
        count, total = self.conn.execute(
            "SELECT count(*), coalesce(sum(value), 0) FROM trigger_windows"
            " WHERE trigger_id = ? AND subject = ? AND time > ? AND time <= ?",
            (trigger_id, subject, start_us, end_us),
        ).fetchone()
        return int(count), float(total)

    def window_prune(self, trigger_id: str, subject: str, before_us: int) -> None:
        self.conn.execute(
            "DELETE FROM trigger_windows WHERE trigger_id = ? AND subject = ? AND time < ?",
            (trigger_id, subject, before_us),
        )

    def last_firing(self, trigger_id: str, subject: str, at_or_before_us: int, excluding: str) -> int | None:
        row = self.conn.execute(
            "SELECT max(event_time) FROM actions WHERE trigger_id = ? AND subject = ? AND event_time <= ?"
            " AND id != ? AND status != 'failed'",
            (trigger_id, subject, at_or_before_us, excluding),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def record_action(self, action: ActionRecord) -> bool:
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO actions ({ACTION_COLUMNS}) VALUES ({','.join('?' * 16)})", _action_row(action)
        )
        return cur.rowcount == 1

    def settle_action(self, action_id: str, status: ActionStatus, error: str | None, result: bytes | None) -> None:
        self.conn.execute(
            "UPDATE actions SET status = ?, error = ?, result = ? WHERE id = ?",
            (status, error, None if result is None else result.decode(), action_id),
        )

    def enroll(
        self, tenant: str, mode: Mode, journey_id: str, subject: str, action_id: str, how: str, at: datetime
    ) -> str:
        scope = (tenant, mode, journey_id, subject)
        active = self.conn.execute(
            "SELECT id FROM enrollments WHERE tenant = ? AND mode = ? AND journey_id = ? AND subject = ?"
            " AND status = 'active'",
            scope,
        ).fetchall()
        outcome = "enrolled"
        if active and how == "skip_if_active":
            return "skipped"
        if active and how == "restart":
            self.conn.execute(
                "UPDATE enrollments SET status = 'restarted' WHERE tenant = ? AND mode = ? AND journey_id = ?"
                " AND subject = ? AND status = 'active'",
                scope,
            )
            outcome = "restarted"
        self.conn.execute(
            "INSERT OR IGNORE INTO enrollments VALUES (?, ?, ?, ?, ?, 'active', ?, ?)",
            (enrollment_id(action_id), tenant, mode, journey_id, subject, action_id, to_us(at)),
        )
        return outcome

    def set_attribute(self, tenant: str, mode: Mode, subject: str, name: str, value: Any, at: datetime) -> None:
        self.conn.execute(
            "INSERT INTO profiles VALUES (?, ?, ?, json_object(?, json(?)), ?)"
            " ON CONFLICT (tenant, mode, subject) DO UPDATE SET"
            " attributes = json_set(attributes, '$.' || json_quote(?), json(?)), updated_at = excluded.updated_at",
            (tenant, mode, subject, name, _encode(value).decode(), to_us(at), name, _encode(value).decode()),
        )

    def enqueue_deliveries(
        self,
        tenant: str,
        mode: Mode,
        topic: str,
        message_key: str,
        payload: bytes,
        at: datetime,
        endpoint_id: str | None = None,
    ) -> list[str]:
        return enqueue_deliveries(self.conn, tenant, mode, topic, message_key, payload, at, endpoint_id)


class TriggerTables(SqliteCore):
    SCHEMA = TRIGGER_SCHEMA

    async def put_trigger(self, record: TriggerRecord) -> None:
        await self.write(lambda tx: TRIGGERS.put(tx.conn, record))

    async def get_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> TriggerRecord | None:
        return await self.read(lambda conn: TRIGGERS.get(conn, tenant, mode, trigger_id))

    async def list_triggers(self, tenant: str, mode: Mode) -> list[TriggerRecord]:
        return await self.read(lambda conn: TRIGGERS.list(conn, tenant, mode))

    async def delete_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> bool:
        return await self.write(lambda tx: TRIGGERS.delete(tx.conn, tenant, mode, trigger_id))

    async def triggers_version(self) -> int:
        row = await self.read(lambda conn: conn.execute("SELECT version FROM trigger_changes").fetchone())
        return 0 if row is None else int(row[0])

    async def get_type_mappings(self, tenant: str, mode: Mode) -> dict[str, list[str]] | None:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT mappings FROM type_mappings WHERE tenant = ? AND mode = ?", (tenant, mode)
            ).fetchone()
        )
        return None if row is None else msgspec.json.decode(row[0], type=dict[str, list[str]])

    async def put_type_mappings(self, tenant: str, mode: Mode, mappings: dict[str, list[str]], at: datetime) -> None:
        value = _encode(mappings).decode()
        await self.write(lambda tx: TYPE_MAPPINGS.put(tx.conn, tenant, mode, value, at))

    async def list_actions(self, query: ActionQuery) -> list[tuple[int, ActionRecord]]:
        clause, args = where(
            ("tenant = ?", query.tenant),
            ("mode = ?", query.mode),
            ("type = ?", query.type),
            ("subject = ?", query.subject),
            ("trigger_id = ?", query.trigger_id),
            ("event_id = ?", query.event_id),
            ("status = ?", query.status),
            ("position < ?", query.before),
        )
        args.append(query.limit)
        sql = f"SELECT position, {ACTION_COLUMNS} FROM actions WHERE {clause} ORDER BY position DESC LIMIT ?"
        return await self.read(lambda conn: [(r[0], _row_to_action(r[1:])) for r in conn.execute(sql, args)])

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
