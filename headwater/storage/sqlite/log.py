"""The event log and the quarantine on SQLite, in the main database file.

Every event row carries its partition (`partitions.partition_of`), and the index on
(partition, seq) is how a consumer reads one partition in order. Offsets are in commit
order: one writer at a time holds the file's write lock from assigning them to its commit.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from headwater import faults
from headwater.clock import from_us, to_us
from headwater.events import Event, EventDraft, FieldError, Mode, QuarantinedEvent
from headwater.ids import id_floor, looks_like_event_id
from headwater.partitions import DEFAULT_PARTITIONS, partition_of
from headwater.storage.base import IncompatibleStore
from headwater.storage.log import (
    AppendOutcome,
    EventQuery,
    EventSummary,
    LogPage,
    QuarantineQuery,
    Refused,
    Scope,
)
from headwater.storage.sqlite.core import SqliteCore, Transaction, where

LOG_SCHEMA = """
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
    violations TEXT,
    partition INTEGER NOT NULL DEFAULT 0
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
-- Rows of a partition, in log order (the rowid is the offset).
CREATE INDEX IF NOT EXISTS events_partition ON events (partition);

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

-- What the store was created with: `partitions` never changes afterwards.
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

EVENT_COLUMNS = (
    "seq, id, tenant, mode, type, subject, source, channel, time, received_at, idempotency_key, data, violations"
)
# Rows per INSERT statement. Python's sqlite3 lets go of the GIL for every step of a statement and
# then waits to get it back, so with one INSERT per row a 1,000-event batch waited a thousand times
# for an API loop busy parsing, and every other tenant's event waited behind that batch
# (bench/fairness.py, a flood of batches over the loud tenant's limit: the quiet tenant's p50
# 244 -> 90 ms, p99 529 -> 249 ms). 64 rows of 14 values stay under SQLite's oldest limit of 999
# variables a statement.
ROWS_PER_INSERT = 64


@functools.cache
def _insert_rows(count: int) -> str:
    return f"INSERT INTO events ({EVENT_COLUMNS}, partition) VALUES " + ",".join(
        ["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * count
    )


def insert_events(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """`rows` in statements of `ROWS_PER_INSERT` rows each, and one for the rest."""
    full = len(rows) - len(rows) % ROWS_PER_INSERT
    if full:
        chunks = (rows[at : at + ROWS_PER_INSERT] for at in range(0, full, ROWS_PER_INSERT))
        conn.executemany(_insert_rows(ROWS_PER_INSERT), ([v for row in chunk for v in row] for chunk in chunks))
    if full < len(rows):
        conn.execute(_insert_rows(len(rows) - full), [v for row in rows[full:] for v in row])


FIND_DUPLICATE = "SELECT id, seq, partition FROM events WHERE tenant = ? AND mode = ? AND idempotency_key = ?"
FIND_BY_ID = "SELECT id, seq, partition FROM events WHERE tenant = ? AND mode = ? AND id = ?"
QUARANTINE_COLUMNS = (
    "id, tenant, mode, dialect, type, received_at, reasons, raw, draft, status, replayed_event_id, replayed_at"
)
INSERT_QUARANTINE = f"INSERT INTO quarantine ({QUARANTINE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
# A scope filter as row values, above which the rows are filtered in Python instead.
MAX_SCOPE_TERMS = 64
HEAD_POLL_SECONDS = 0.005
# Events in one group commit of the log once it holds more than one request: one 1,000-event
# batch, which is what another tenant's request waits out at most before its own
# (`headwater.storage.lanes`). Two batches a group ingested no faster (bench/fairness.py: 22k
# events/s either way) and doubled that wait (the quiet tenant's p50 under a flood of batches
# 63 -> 37 ms, p99 128 -> 68 ms).
LOG_GROUP_EVENTS = 1_000

_field_errors = msgspec.json.Decoder(list[FieldError])
_draft = msgspec.json.Decoder(EventDraft)
_encode = msgspec.json.encode


class PartitionMismatch(IncompatibleStore):
    """The store was created with another partition count than the one asked for."""


def row_to_event(row: tuple[Any, ...]) -> Event:
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


def append_events(tx: Transaction, events: Sequence[Event | Refused], partitions: int) -> list[AppendOutcome]:
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
                outcomes.append(AppendOutcome("duplicate", original[0], original[1], original[2]))
                continue
        if isinstance(event, Refused):
            if event.quarantined is not None:
                quarantined.append(_quarantine_row(event.quarantined))
            outcomes.append(AppendOutcome("refused", None, None, None))
            continue
        seq = tx.next_seq()
        partition = partition_of(event.tenant, event.mode, event.subject, partitions)
        if key is not None:
            tx.new_keys[scope] = (event.id, seq, partition)
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
                partition,
            )
        )
        outcomes.append(AppendOutcome("accepted", event.id, seq, partition))
    insert_events(tx.conn, rows)
    if quarantined:
        tx.conn.executemany(INSERT_QUARANTINE, quarantined)
    return outcomes


def _scope_filter(scopes: frozenset[Scope]) -> tuple[str, list[Any]]:
    if not scopes or len(scopes) > MAX_SCOPE_TERMS:
        return "", []
    values = ",".join(["(?,?)"] * len(scopes))
    return f" AND (tenant, mode) IN (VALUES {values})", [x for scope in sorted(scopes) for x in scope]


class LogTables(SqliteCore):
    """The log's tables; `partitions` is read (or recorded, for a new store) at start."""

    SCHEMA = LOG_SCHEMA
    METERED = True

    def __init__(self, *args: Any, partitions: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_group", LOG_GROUP_EVENTS)
        super().__init__(*args, **kwargs)
        self._wanted_partitions = partitions
        self._partitions = partitions or DEFAULT_PARTITIONS

    @property
    def partitions(self) -> int:
        return self._partitions

    def prepare(self, conn: sqlite3.Connection) -> None:
        super().prepare(conn)
        row = conn.execute("SELECT value FROM meta WHERE name = 'partitions'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('partitions', ?)", (str(self._partitions),))
            return
        recorded = int(row[0])
        if self._wanted_partitions is not None and self._wanted_partitions != recorded:
            raise PartitionMismatch(
                f"HEADWATER_PARTITIONS={self._wanted_partitions} does not match this data dir, created with"
                f" {recorded} partitions: the count cannot change (leave it unset, or set it to {recorded})"
            )
        self._partitions = recorded

    async def append(
        self, events: Sequence[Event | Refused], quarantine: Sequence[QuarantinedEvent] = ()
    ) -> list[AppendOutcome]:
        partitions = self._partitions
        limit = None if faults.PAGE_LIMIT_FILE is None else faults.page_limit()

        def run(tx: Transaction) -> list[AppendOutcome]:
            if limit is not None:  # a test's full disk (headwater.faults)
                tx.conn.execute(f"PRAGMA max_page_count = {limit}")
            if quarantine:
                tx.conn.executemany(INSERT_QUARANTINE, [_quarantine_row(q) for q in quarantine])
            return append_events(tx, events, partitions) if events else []

        lane = events[0].tenant if events else quarantine[0].tenant if quarantine else None
        return await self.write(run, size=len(events) + len(quarantine) or 1, lane=lane)

    async def get_event(self, tenant: str, mode: Mode, event_id: str) -> Event | None:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ? AND tenant = ? AND mode = ?"

        def run(conn: sqlite3.Connection) -> Event | None:
            row = conn.execute(sql, (event_id, tenant, mode)).fetchone()
            return None if row is None else row_to_event(row)

        return await self.read(run)

    async def get_events(self, seqs: Sequence[int]) -> list[Event]:
        wanted = sorted(set(seqs))
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({','.join('?' * len(wanted))}) ORDER BY seq"
        if not wanted:
            return []
        return await self.read(lambda conn: [row_to_event(r) for r in conn.execute(sql, wanted)])

    async def query_events(self, query: EventQuery) -> list[Event]:
        return await self.read(lambda conn: _query_events(conn, query))

    async def read_log(self, after_seq: int, limit: int) -> list[Event]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        return await self.read(lambda conn: [row_to_event(r) for r in conn.execute(sql, (after_seq, limit))])

    async def read_scope(self, tenant: str, mode: Mode, after_seq: int, upto_seq: int) -> list[Event]:
        # NOT INDEXED: the rowid range, not the (tenant, mode, ...) indexes, which would read
        # all of the tenant's history for a range of a few thousand offsets.
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM events NOT INDEXED"
            " WHERE seq > ? AND seq <= ? AND tenant = ? AND mode = ? ORDER BY seq"
        )
        args = (after_seq, upto_seq, tenant, mode)
        return await self.read(lambda conn: [row_to_event(r) for r in conn.execute(sql, args)])

    async def read_summaries(self, after_seq: int, limit: int, sample: int) -> list[EventSummary]:
        sql = (
            "SELECT seq, tenant, mode, type, received_at, coalesce(violations, '[]') != '[]',"
            " CASE WHEN seq % ? = 0 THEN CAST(data AS BLOB) END FROM events WHERE seq > ? ORDER BY seq LIMIT ?"
        )
        args = (sample, after_seq, limit)
        return await self.read(lambda conn: [EventSummary._make(r) for r in conn.execute(sql, args)])

    async def read_partition(
        self, partition: int, after_seq: int, limit: int, scopes: frozenset[Scope] | None = None
    ) -> LogPage:
        span = "SELECT seq FROM events WHERE partition = ? AND seq > ? ORDER BY partition, seq LIMIT ?"
        extent = f"SELECT count(*), max(seq) FROM ({span})"

        def run(conn: sqlite3.Connection) -> LogPage:
            examined, end = conn.execute(extent, (partition, after_seq, limit)).fetchone()
            if not examined:
                return LogPage([], after_seq, 0)
            if scopes is not None and not scopes:
                return LogPage([], end, examined)
            clause, args = _scope_filter(scopes or frozenset())
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE partition = ? AND seq > ? AND seq <= ?{clause}"
                " ORDER BY partition, seq"
            )
            rows = conn.execute(sql, (partition, after_seq, end, *args)).fetchall()
            events = [row_to_event(r) for r in rows]
            if scopes is not None and not clause:
                events = [e for e in events if (e.tenant, e.mode) in scopes]
            return LogPage(events, end, examined)

        return await self.read(run)

    async def head(self) -> int:
        row = await self.read(lambda conn: conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone())
        return int(row[0])

    async def partition_heads(self) -> dict[int, int]:
        partitions = self._partitions
        sql = "SELECT max(seq) FROM events WHERE partition = ?"

        def run(conn: sqlite3.Connection) -> dict[int, int]:
            heads = {}
            for p in range(partitions):
                row = conn.execute(sql, (p,)).fetchone()
                if row[0] is not None:
                    heads[p] = int(row[0])
            return heads

        return await self.read(run)

    async def count_after(self, partition: int, after_seq: int) -> int:
        sql = "SELECT count(*) FROM events WHERE partition = ? AND seq > ?"
        row = await self.read(lambda conn: conn.execute(sql, (partition, after_seq)).fetchone())
        return int(row[0])

    async def wait_appended(self, head: int, timeout: float) -> int:
        """Polls: SQLite has no notification across processes, and the head is one look-up of
        the table's last rowid."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            now_head = await self.head()
            if now_head > head or loop.time() >= deadline:
                return now_head
            await asyncio.sleep(min(HEAD_POLL_SECONDS, max(0.0, deadline - loop.time())))

    async def received_per_minute(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[int, int]]:
        # The id range bounds the scan by the window, whatever the tenant's size (the
        # (tenant, mode, time) index would read all of its history); a minute's margin for the
        # clock of another machine that made ids.
        sql = (
            "SELECT received_at / 60000000 AS minute, count(*) FROM events INDEXED BY events_id"
            " WHERE id >= ? AND tenant = ? AND mode = ? AND received_at >= ? GROUP BY minute ORDER BY minute"
        )
        args = (id_floor("evt", since_us // 1000 - 60_000), tenant, mode, since_us)
        return await self.read(lambda conn: [(int(m), int(n)) for m, n in conn.execute(sql, args)])

    async def rejection_counts(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[str, int]]:
        sql = (
            "SELECT json_extract(reason.value, '$.code') AS code, count(*) AS n"
            " FROM quarantine, json_each(quarantine.reasons) AS reason"
            " WHERE tenant = ? AND mode = ? AND status IN ('quarantined', 'replayed') AND quarantine.id >= ?"
            " AND received_at >= ? GROUP BY code ORDER BY n DESC, code"
        )
        args = (tenant, mode, id_floor("qua", since_us // 1000 - 60_000), since_us)
        return await self.read(lambda conn: [(str(c), int(n)) for c, n in conn.execute(sql, args)])

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


def _query_events(conn: sqlite3.Connection, query: EventQuery) -> list[Event]:
    """One indexed range scan per requested type, merged newest first.

    Several types would otherwise make SQLite sort every matching row; per type,
    each scan stops after `limit` rows, so a page costs the same at any size.
    """
    per_type: Iterable[str | None] = query.types or (None,)
    scans = [conn.execute(*_page_sql(query, t)).fetchall() for t in per_type]
    rows = scans[0] if len(scans) == 1 else heapq.merge(*scans, key=_position, reverse=True)
    return [row_to_event(r) for _, r in zip(range(query.limit), rows, strict=False)]


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
    if query.processed is not None:
        # Only what a consumer has passed: each partition up to its checkpoint there.
        cases = " ".join("WHEN ? THEN ?" for _ in query.processed)
        where.append(f"seq <= CASE partition {cases} ELSE 0 END" if cases else "0")
        args.extend(x for item in sorted(query.processed.items()) for x in item)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY time DESC, seq DESC LIMIT ?"
    args.append(query.limit)
    return sql, args
