"""The embedded store: events, keys, schemas, quarantine and the catalog, on SQLite.

The writer/reader machinery is in `sqlite_core.py`; other table groups add themselves
as base classes of `SqliteStore`.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Event, EventDraft, FieldError, Mode, QuarantinedEvent
from headwater.ids import looks_like_event_id
from headwater.storage.base import (
    AppendOutcome,
    CatalogEntry,
    Enforcement,
    EventQuery,
    KeyRecord,
    QuarantineQuery,
    Refused,
    SchemaVersion,
)
from headwater.storage.derived import ProcessingState
from headwater.storage.sqlite_core import SqliteCore, Transaction, where
from headwater.storage.sqlite_gamification import GamificationStateMixin, GamificationTables
from headwater.storage.sqlite_triggers import SqliteProcessingState, TriggerTables
from headwater.storage.sqlite_webhooks import WebhookTables

SCHEMAS_TABLE = """
CREATE TABLE IF NOT EXISTS schemas (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    enforcement TEXT NOT NULL,
    schema TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, type, version)
);
"""

EVENTS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    subject TEXT,
    source TEXT,
    channel TEXT,
    time INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    idempotency_key TEXT,
    data TEXT NOT NULL,
    violations TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events (id);
CREATE UNIQUE INDEX IF NOT EXISTS events_dedup ON events (tenant, mode, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_time ON events (tenant, mode, time, seq);
CREATE INDEX IF NOT EXISTS events_type ON events (tenant, mode, type, time, seq);
CREATE INDEX IF NOT EXISTS events_subject ON events (tenant, mode, subject, time, seq)
    WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_source ON events (tenant, mode, source, time, seq)
    WHERE source IS NOT NULL;

CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (name),
    role TEXT NOT NULL,
    mode TEXT NOT NULL,
    prefix TEXT NOT NULL,
    name TEXT,
    key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created_at);

{SCHEMAS_TABLE}
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    dialect TEXT NOT NULL,
    type TEXT,
    received_at INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    raw TEXT,
    draft TEXT,
    status TEXT NOT NULL,
    replayed_event_id TEXT,
    replayed_at INTEGER
);
CREATE INDEX IF NOT EXISTS quarantine_scope ON quarantine (tenant, mode, status, id);

CREATE TABLE IF NOT EXISTS catalog (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    violations INTEGER NOT NULL,
    PRIMARY KEY (tenant, mode, type)
);
CREATE TABLE IF NOT EXISTS catalog_properties (
    tenant TEXT NOT NULL,
    mode TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    json_type TEXT NOT NULL,
    PRIMARY KEY (tenant, mode, type, name, json_type)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS checkpoints (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""
# What the facts consumer derives is in sqlite_gamification.py (facts themselves are read from this log).


def upgrade_schemas(conn: sqlite3.Connection) -> None:
    """Before the schema: a `schemas` table of the older layout, without a mode, is rebuilt
    with one. Its schemas applied to both modes; they become live-mode schemas (a test-mode
    key can put its own), so test events stop being checked by them and nothing live changes."""

    def old_layout() -> bool:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(schemas)")}
        return bool(columns) and "mode" not in columns

    if not old_layout():
        return
    conn.execute("BEGIN IMMEDIATE")
    if old_layout():  # still: another process starting on the same file may have been first
        conn.execute("ALTER TABLE schemas RENAME TO schemas_without_mode")
        conn.execute(SCHEMAS_TABLE)
        conn.execute(
            "INSERT INTO schemas (tenant, mode, type, version, enforcement, schema, created_at)"
            " SELECT tenant, 'live', type, version, enforcement, schema, created_at FROM schemas_without_mode"
        )
        conn.execute("DROP TABLE schemas_without_mode")
    conn.execute("COMMIT")


EVENT_COLUMNS = (
    "seq, id, tenant, mode, type, subject, source, channel, time, received_at, idempotency_key, data, violations"
)
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
_field_errors = msgspec.json.Decoder(list[FieldError])
_draft = msgspec.json.Decoder(EventDraft)
_encode = msgspec.json.encode
FIND_DUPLICATE = "SELECT id, seq FROM events WHERE tenant = ? AND mode = ? AND idempotency_key = ?"
FIND_BY_ID = "SELECT id, seq FROM events WHERE tenant = ? AND mode = ? AND id = ?"


def _row_to_event(row: tuple[Any, ...]) -> Event:
    seq, id_, tenant, mode, type_, subject, source, channel, time, received, key, data, violations = row
    return Event(
        id=id_,
        type=type_,
        subject=subject,
        source=source,
        channel=channel,
        time=from_us(time),
        received_at=from_us(received),
        idempotency_key=key,
        data=msgspec.Raw(data.encode()),
        tenant=tenant,
        mode=mode,
        seq=seq,
        violations=None if violations is None else _field_errors.decode(violations),
    )


def _row_to_key(row: tuple[Any, ...]) -> KeyRecord:
    id_, tenant, role, mode, prefix, name, created, revoked = row
    return KeyRecord(
        id=id_,
        tenant=tenant,
        role=role,
        mode=mode,
        prefix=prefix,
        name=name,
        created_at=from_us(created),
        revoked_at=None if revoked is None else from_us(revoked),
    )


KEY_COLUMNS = "id, tenant, role, mode, prefix, name, created_at, revoked_at"


SCHEMA_COLUMNS = "type, version, enforcement, schema, created_at"
QUARANTINE_COLUMNS = (
    "id, tenant, mode, dialect, type, received_at, reasons, raw, draft, status, replayed_event_id, replayed_at"
)
INSERT_QUARANTINE = f"INSERT INTO quarantine ({QUARANTINE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
UPSERT_CATALOG = """
INSERT INTO catalog (tenant, mode, type, count, first_seen, last_seen, violations) VALUES (?,?,?,?,?,?,?)
ON CONFLICT (tenant, mode, type) DO UPDATE SET
    count = count + excluded.count,
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    violations = violations + excluded.violations
"""
# json_each's type names, as JSON Schema names them.
JSON_TYPE_NAMES = """CASE j.type WHEN 'text' THEN 'string' WHEN 'real' THEN 'number'
    WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' ELSE j.type END"""


def _row_to_schema(row: tuple[Any, ...]) -> SchemaVersion:
    type_, version, enforcement, schema, created = row
    return SchemaVersion(type_, version, enforcement, msgspec.Raw(schema.encode()), from_us(created))


def _quarantine_row(item: QuarantinedEvent) -> tuple[Any, ...]:
    draft = None if item.draft is None else _encode(item.draft).decode()
    return (
        item.id,
        item.tenant,
        item.mode,
        item.dialect,
        item.type,
        to_us(item.received_at),
        _encode(item.reasons).decode(),
        item.raw,
        draft,
        item.status,
        item.replayed_event_id,
        None if item.replayed_at is None else to_us(item.replayed_at),
    )


def _row_to_quarantined(row: tuple[Any, ...]) -> QuarantinedEvent:
    id_, tenant, mode, dialect, type_, received, reasons, raw, draft, status, replayed_id, replayed_at = row
    return QuarantinedEvent(
        id=id_,
        tenant=tenant,
        mode=mode,
        dialect=dialect,
        type=type_,
        received_at=from_us(received),
        reasons=_field_errors.decode(reasons),
        raw=raw,
        draft=None if draft is None else _draft.decode(draft),
        status=status,
        replayed_event_id=replayed_id,
        replayed_at=None if replayed_at is None else from_us(replayed_at),
    )


CATALOG_PROPERTY_SAMPLE = 16


def _catalog_delta(
    conn: sqlite3.Connection, max_events: int
) -> tuple[int, int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    row = conn.execute("SELECT seq FROM checkpoints WHERE consumer = 'catalog'").fetchone()
    start = row[0] if row else 0
    head = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    end = min(head, start + max_events)
    if end <= start:
        return start, start, [], []
    counts = conn.execute(
        "SELECT tenant, mode, type, count(*), min(received_at), max(received_at), count(violations)"
        " FROM events WHERE seq > ? AND seq <= ? GROUP BY tenant, mode, type",
        (start, end),
    ).fetchall()
    # Walking every event's JSON cost a fifth of the ingest CPU, so properties are discovered
    # from every event of a type the catalog has not seen yet and from a sample of the rest.
    properties = conn.execute(
        f"SELECT DISTINCT e.tenant, e.mode, e.type, j.key, {JSON_TYPE_NAMES}"
        " FROM events e, json_each(e.data) j WHERE e.seq > ? AND e.seq <= ?"
        f" AND (e.seq % {CATALOG_PROPERTY_SAMPLE} = 0 OR NOT EXISTS (SELECT 1 FROM catalog c"
        " WHERE c.tenant = e.tenant AND c.mode = e.mode AND c.type = e.type))",
        (start, end),
    ).fetchall()
    return start, end, counts, properties


def _append_events(tx: Transaction, events: Sequence[Event | Refused]) -> list[AppendOutcome]:
    outcomes: list[AppendOutcome] = []
    rows: list[tuple[Any, ...]] = []
    quarantined: list[tuple[Any, ...]] = []
    # A batch shares one receive time, and events sent without a time share it too:
    # convert each distinct datetime object once.
    last_time: datetime | None = None
    last_us = 0
    for event in events:
        key = event.idempotency_key
        if key is not None:
            scope = (event.tenant, event.mode, key)
            original = tx.new_keys.get(scope) or tx.conn.execute(FIND_DUPLICATE, scope).fetchone()
            # Only a key shaped like an event id can name one: other keys cost no second lookup.
            if original is None and looks_like_event_id(key):
                original = tx.conn.execute(FIND_BY_ID, scope).fetchone()
            if original is not None:
                outcomes.append(AppendOutcome("duplicate", original[0], original[1]))
                continue
        if isinstance(event, Refused):
            if event.quarantined is not None:
                quarantined.append(_quarantine_row(event.quarantined))
            outcomes.append(AppendOutcome("refused", None, None))
            continue
        seq = tx.next_seq()
        if key is not None:
            tx.new_keys[scope] = (event.id, seq)
        received = event.received_at
        if received is not last_time:
            last_time, last_us = received, to_us(received)
        received_us = last_us
        when = event.time
        time_us = received_us if when is received else to_us(when)
        rows.append(
            (
                seq,
                event.id,
                event.tenant,
                event.mode,
                event.type,
                event.subject,
                event.source,
                event.channel,
                time_us,
                received_us,
                key,
                bytes(event.data).decode(),
                None if event.violations is None else _encode(event.violations).decode(),
            )
        )
        outcomes.append(AppendOutcome("accepted", event.id, seq))
    tx.conn.executemany(INSERT_EVENT, rows)
    if quarantined:
        tx.conn.executemany(INSERT_QUARANTINE, quarantined)
    return outcomes


class SqliteState(GamificationStateMixin, SqliteProcessingState):
    """Every `ProcessingState` operation on the writer's connection, inside the group transaction."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx)
        self.tx = tx

    def append_events(self, events: Sequence[Event]) -> list[bool]:
        return [outcome.status == "accepted" for outcome in _append_events(tx=self.tx, events=events)]


T = TypeVar("T")


class SqliteStore(GamificationTables, TriggerTables, WebhookTables, SqliteCore):
    SCHEMA = EVENTS_SCHEMA
    UPGRADE = staticmethod(upgrade_schemas)

    async def process(self, fn: Callable[[ProcessingState], T], size: int = 1) -> T:
        return await self.write(lambda tx: fn(SqliteState(tx)), size=size)

    # The event log

    async def append(
        self, events: Sequence[Event | Refused], quarantine: Sequence[QuarantinedEvent] = ()
    ) -> list[AppendOutcome]:
        def run(tx: Transaction) -> list[AppendOutcome]:
            if quarantine:
                tx.conn.executemany(INSERT_QUARANTINE, [_quarantine_row(q) for q in quarantine])
            return _append_events(tx, events) if events else []

        return await self.write(run, size=len(events) + len(quarantine) or 1)

    async def get_event(self, tenant: str, mode: Mode, event_id: str) -> Event | None:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> Event | None:
            row = conn.execute(sql, (event_id, tenant, mode)).fetchone()
            return None if row is None else _row_to_event(row)

        return await self.read(run)

    async def query_events(self, query: EventQuery) -> list[Event]:
        return await self.read(lambda conn: _query_events(conn, query))

    async def read_log(self, after_seq: int, limit: int) -> list[Event]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        return await self.read(lambda conn: [_row_to_event(r) for r in conn.execute(sql, (after_seq, limit))])

    async def log_range(self, after_seq: int, limit: int) -> tuple[int, set[tuple[str, Mode]]]:
        sql = "SELECT seq, tenant, mode FROM events WHERE seq > ? ORDER BY seq LIMIT ?"

        def run(conn: sqlite3.Connection) -> tuple[int, set[tuple[str, Mode]]]:
            rows = conn.execute(sql, (after_seq, limit)).fetchall()
            return (rows[-1][0] if rows else after_seq), {(tenant, mode) for _, tenant, mode in rows}

        return await self.read(run)

    # Tenants and keys

    async def ensure_tenant(self, tenant: str) -> bool:
        now = to_us(datetime.now(UTC))

        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "INSERT INTO tenants (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (tenant, now),
            )
            return cur.rowcount == 1

        return await self.write(run)

    async def count_tenants(self) -> int:
        row = await self.read(lambda conn: conn.execute("SELECT count(*) FROM tenants").fetchone())
        return int(row[0])

    async def add_key(self, record: KeyRecord, key_hash: str) -> None:
        values = (
            record.id,
            record.tenant,
            record.role,
            record.mode,
            record.prefix,
            record.name,
            key_hash,
            to_us(record.created_at),
        )
        await self.write(
            lambda tx: tx.conn.execute(
                "INSERT INTO api_keys (id, tenant, role, mode, prefix, name, key_hash, created_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                values,
            )
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"

        def run(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(sql, (key_hash,)).fetchone()
            return None if row is None else _row_to_key(row)

        return await self.read(run)

    async def list_keys(self, tenant: str) -> list[KeyRecord]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = ? ORDER BY created_at, id"
        return await self.read(lambda conn: [_row_to_key(r) for r in conn.execute(sql, (tenant,))])

    async def revoke_key(self, tenant: str, key_id: str, at: datetime) -> bool:
        def run(tx: Transaction) -> bool:
            cur = tx.conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND tenant = ? AND revoked_at IS NULL",
                (to_us(at), key_id, tenant),
            )
            return cur.rowcount == 1

        return await self.write(run)

    # Schemas

    async def put_schema(
        self, tenant: str, mode: Mode, type_: str, schema: bytes, enforcement: Enforcement, at: datetime
    ) -> SchemaVersion:
        def run(tx: Transaction) -> SchemaVersion:
            row = tx.conn.execute(
                "SELECT coalesce(max(version), 0) + 1 FROM schemas WHERE tenant = ? AND mode = ? AND type = ?",
                (tenant, mode, type_),
            ).fetchone()
            version = int(row[0])
            tx.conn.execute(
                f"INSERT INTO schemas ({SCHEMA_COLUMNS}, tenant, mode) VALUES (?,?,?,?,?,?,?)",
                (type_, version, enforcement, schema.decode(), to_us(at), tenant, mode),
            )
            return SchemaVersion(type_, version, enforcement, msgspec.Raw(schema), at)

        return await self.write(run)

    async def latest_schemas(self, tenant: str, mode: Mode) -> list[SchemaVersion]:
        sql = (
            f"SELECT {SCHEMA_COLUMNS} FROM schemas s WHERE tenant = ? AND mode = ? AND version = (SELECT max(version)"
            " FROM schemas WHERE tenant = s.tenant AND mode = s.mode AND type = s.type) ORDER BY type"
        )
        return await self.read(lambda conn: [_row_to_schema(r) for r in conn.execute(sql, (tenant, mode))])

    async def schema_versions(self, tenant: str, mode: Mode, type_: str) -> list[SchemaVersion]:
        sql = f"SELECT {SCHEMA_COLUMNS} FROM schemas WHERE tenant = ? AND mode = ? AND type = ? ORDER BY version"
        return await self.read(lambda conn: [_row_to_schema(r) for r in conn.execute(sql, (tenant, mode, type_))])

    # Quarantine

    async def list_quarantine(self, query: QuarantineQuery) -> list[QuarantinedEvent]:
        clause, args = where(
            ("tenant = ?", query.tenant),
            ("mode = ?", query.mode),
            ("status = ?", query.status),
            ("type = ?", query.type),
            ("id < ?", query.before),
            ("received_at >= ?", None if query.received_from is None else to_us(query.received_from)),
            ("received_at < ?", None if query.received_to is None else to_us(query.received_to)),
        )
        if query.ids:
            clause += f" AND id IN ({','.join('?' * len(query.ids))})"
            args.extend(query.ids)
        sql = f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE {clause} ORDER BY id DESC LIMIT ?"
        args.append(query.limit)
        return await self.read(lambda conn: [_row_to_quarantined(r) for r in conn.execute(sql, args)])

    async def mark_replayed(self, tenant: str, mode: Mode, outcomes: Sequence[tuple[str, str]], at: datetime) -> None:
        rows = [(event_id, to_us(at), item_id, tenant, mode) for item_id, event_id in outcomes]
        await self.write(
            lambda tx: tx.conn.executemany(
                "UPDATE quarantine SET status = 'replayed', replayed_event_id = ?, replayed_at = ?"
                " WHERE id = ? AND tenant = ? AND mode = ?",
                rows,
            )
        )

    async def update_quarantine_reasons(
        self, tenant: str, mode: Mode, reasons: Sequence[tuple[str, list[FieldError]]]
    ) -> None:
        rows = [(_encode(errors).decode(), item_id, tenant, mode) for item_id, errors in reasons]
        await self.write(
            lambda tx: tx.conn.executemany(
                "UPDATE quarantine SET reasons = ? WHERE id = ? AND tenant = ? AND mode = ?", rows
            )
        )

    # The event catalog

    async def refresh_catalog(self, max_events: int) -> int:
        """Aggregate on a reader connection (SQLite does the JSON work without the GIL),
        then fold the small result in with a compare-and-set on the checkpoint."""
        start, end, counts, properties = await self.read(lambda conn: _catalog_delta(conn, max_events))
        if end == start:
            return 0

        def run(tx: Transaction) -> bool:
            row = tx.conn.execute("SELECT seq FROM checkpoints WHERE consumer = 'catalog'").fetchone()
            if (row[0] if row else 0) != start:
                return False  # another process folded this range in first
            tx.conn.executemany(UPSERT_CATALOG, counts)
            tx.conn.executemany("INSERT OR IGNORE INTO catalog_properties VALUES (?,?,?,?,?)", properties)
            tx.conn.execute(
                "INSERT INTO checkpoints VALUES ('catalog', ?) ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
                (end,),
            )
            return True

        return end - start if await self.write(run) else 0

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]:
        def run(conn: sqlite3.Connection) -> list[CatalogEntry]:
            properties: dict[str, dict[str, list[str]]] = {}
            for type_, name, json_type in conn.execute(
                "SELECT type, name, json_type FROM catalog_properties WHERE tenant = ? AND mode = ?"
                " ORDER BY type, name, json_type",
                (tenant, mode),
            ):
                properties.setdefault(type_, {}).setdefault(name, []).append(json_type)
            return [
                CatalogEntry(type_, count, from_us(first), from_us(last), violations, properties.get(type_, {}))
                for type_, count, first, last, violations in conn.execute(
                    "SELECT type, count, first_seen, last_seen, violations FROM catalog"
                    " WHERE tenant = ? AND mode = ? ORDER BY type",
                    (tenant, mode),
                )
            ]

        return await self.read(run)


def _query_events(conn: sqlite3.Connection, query: EventQuery) -> list[Event]:
    """One indexed range scan per requested type, merged newest first.

    Several types would otherwise make SQLite sort every matching row; per type,
    each scan stops after `limit` rows, so a page costs the same at any size.
    """
    per_type: Iterable[str | None] = query.types or (None,)
    scans = [conn.execute(*_page_sql(query, t)).fetchall() for t in per_type]
    rows = scans[0] if len(scans) == 1 else heapq.merge(*scans, key=_position, reverse=True)
    return [_row_to_event(r) for _, r in zip(range(query.limit), rows, strict=False)]


def _position(row: tuple[Any, ...]) -> tuple[int, int]:
    return row[8], row[0]


def _page_sql(query: EventQuery, type_: str | None) -> tuple[str, list[Any]]:
    where = ["tenant = ?", "mode = ?"]
    args: list[Any] = [query.tenant, query.mode]
    for column, value in (("type", type_), ("subject", query.subject), ("source", query.source)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.time_from is not None:
        where.append("time >= ?")
        args.append(to_us(query.time_from))
    if query.time_to is not None:
        where.append("time < ?")
        args.append(to_us(query.time_to))
    if query.before is not None:
        where.append("(time, seq) < (?, ?)")
        args.extend((to_us(query.before[0]), query.before[1]))
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY time DESC, seq DESC LIMIT ?"
    args.append(query.limit)
    return sql, args
