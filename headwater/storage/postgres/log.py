"""The event log and the quarantine on PostgreSQL.

Offsets are in commit order: one sequencer
------------------------------------------
Any number of API processes and workers, on any machines, append at once. Offsets taken from a
bigserial as rows are inserted would commit out of order: a transaction that took offset 7
may commit after another took and committed 8, and a consumer that had read up to 8 and
checkpointed there would never look at 7. So every append transaction first takes one
transaction-scoped advisory lock (`SEQUENCER_LOCK`, the same constant in every process), and
only then reads the highest offset and numbers its events from the next one. The lock is held
until the transaction ends, and PostgreSQL releases a transaction's locks only after its commit
is visible to every new snapshot (`ProcArrayEndTransaction` comes before the release of locks;
with `synchronous_commit = on` the commit is on disk, and at a synchronous standby, before
that). Hence:

- the next holder's statements (READ COMMITTED: a snapshot per statement, each taken after the
  lock was granted, never in the statement that takes it) see every earlier append, so its
  offsets are all higher: offsets are assigned, and become visible, in commit order, without
  gaps (a rolled-back append leaves none: the next one reads the same highest offset);
- a reader that sees offset N can see every offset below N, and every offset not yet visible
  will be above the highest one it sees. So `head()` is the highest offset, a page's `end` is
  the highest offset it looked at, and a consumer that checkpoints there skips nothing and
  reads nothing twice; `count_after` and `EventQuery.processed` mean what they say.

Dedup is exact for the same reason: under the lock, every key of an earlier append is visible
and no other appender has one in flight, so a key is looked up rather than left to the unique
index to fail on.

The alternative, offsets from a sequence with no lock and an `xid8` column, with readers
stopping at the oldest transaction still running (`pg_snapshot_xmin(pg_current_snapshot())`),
lets appends run in parallel but gives offsets that are not in commit order: every reader must
stop short of the watermark, a consumer's position is no longer "everything up to N", and one
long transaction anywhere in the cluster (any xid, not only an append) stalls every consumer.
The lock costs this: appends of all processes take turns from their first offset to their
commit. Group commit keeps that cheap: each process gathers the appends of its concurrent
requests into one transaction (one multi-row insert, one commit), as the SQLite writer does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple

import asyncpg
import msgspec

from headwater.clock import from_us, to_us
from headwater.events import Event, EventDraft, FieldError, Mode, QuarantinedEvent
from headwater.ids import id_floor, looks_like_event_id
from headwater.metrics import metrics
from headwater.partitions import partition_of
from headwater.storage.base import Backpressure, StoreError
from headwater.storage.lanes import Lanes
from headwater.storage.log import (
    AppendOutcome,
    EventQuery,
    EventSummary,
    LogPage,
    QuarantineQuery,
    Refused,
    Scope,
)
from headwater.storage.postgres.core import PgCore, server_failed, unavailable
from headwater.storage.postgres.protection import PgLogErasure

# The sequencer (see the module's docstring): any constant, the same in every process.
SEQUENCER_LOCK = 0x4857_5351  # "HWSQ"
# At most this many events (and quarantined items) in one transaction (at least one request's),
# so that no process holds the sequencer for long.
MAX_GROUP = 20_000
# How often `wait_appended` looks at the head: soon at first, then every 10 ms.
WAIT_STEPS = (0.001, 0.002, 0.003, 0.005, 0.008)
WAIT_STEADY = 0.01

EVENT_COLUMNS = (
    "seq, id, tenant, mode, type, subject, source, channel, time, received_at, idempotency_key, data, violations"
)
INSERT_EVENTS = (
    f"INSERT INTO events ({EVENT_COLUMNS}, partition)"
    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[],"
    " $8::bytea[], $9::bigint[], $10::bigint[], $11::bytea[], $12::bytea[], $13::text[], $14::integer[])"
)
QUARANTINE_COLUMNS = (
    "id, tenant, mode, dialect, type, received_at, reasons, raw, draft, status, replayed_event_id, replayed_at"
)
INSERT_QUARANTINE = (
    f"INSERT INTO quarantine ({QUARANTINE_COLUMNS})"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bigint[], $7::text[],"
    " $8::bytea[], $9::text[], $10::text[], $11::text[], $12::bigint[])"
)
# The originals of a group's keys: by key, and (for a key shaped like an event id) by id. One
# probe of a unique index per key, whatever the statistics say: inside the fence (OFFSET 0)
# the only condition is on the index's first column, so no plan can prefer another index (with
# none yet, on a new table, (tenant, mode, type, ...) looked as good and scanned a tenant's log).
FIND_ORIGINALS = """
SELECT false, k.i, e.id, e.seq, e.partition
FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS k (tenant, mode, key, i)
CROSS JOIN LATERAL (
    SELECT id, seq, partition, tenant, mode FROM events WHERE idempotency_key = k.key OFFSET 0
) AS e
WHERE e.tenant = k.tenant AND e.mode = k.mode
UNION ALL
SELECT true, k.i, e.id, e.seq, e.partition
FROM unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS k (tenant, mode, id, i)
CROSS JOIN LATERAL (SELECT id, seq, partition, tenant, mode FROM events WHERE id = k.id OFFSET 0) AS e
WHERE e.tenant = k.tenant AND e.mode = k.mode
"""

# The highest offset given out: an erasure may have deleted the newest rows (see `protection`).
HIGHEST_OFFSET = (
    "SELECT greatest(coalesce(max(seq), 0),"
    " coalesce((SELECT value::bigint FROM meta WHERE name = 'erased_head'), 0)) FROM events"
)

Original = tuple[str, int, int]  # id, seq, partition
KeyScope = tuple[str, Mode, str]  # tenant, mode, idempotency key

_field_errors = msgspec.json.Decoder(list[FieldError])
_draft = msgspec.json.Decoder(EventDraft)
_encode = msgspec.json.encode


def _b(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _s(data: bytes | None) -> str | None:
    return None if data is None else data.decode()


def row_to_event(row: asyncpg.Record) -> Event:
    seq, id_, tenant, mode, type_, subject, source, channel, time, received, key, data, violations = row
    return Event(
        id=id_,
        type=type_.decode(),
        subject=_s(subject),
        source=_s(source),
        channel=_s(channel),
        time=from_us(time),
        received_at=from_us(received),
        idempotency_key=_s(key),
        data=msgspec.Raw(data),
        tenant=tenant,
        mode=mode,
        seq=seq,
        violations=None if violations is None else _field_errors.decode(violations),
    )


def _quarantine_columns(items: Sequence[QuarantinedEvent]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(12)]
    for item in items:
        row = (
            item.id,
            item.tenant,
            item.mode,
            item.dialect,
            _b(item.type),
            to_us(item.received_at),
            _encode(item.reasons).decode(),
            _b(item.raw),
            None if item.draft is None else _encode(item.draft).decode(),
            item.status,
            item.replayed_event_id,
            None if item.replayed_at is None else to_us(item.replayed_at),
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _row_to_quarantined(row: asyncpg.Record) -> QuarantinedEvent:
    id_, tenant, mode, dialect, type_, received, reasons, raw, draft, status, replayed_id, replayed_at = row
    return QuarantinedEvent(
        id=id_,
        tenant=tenant,
        mode=mode,
        dialect=dialect,
        type=_s(type_),
        received_at=from_us(received),
        reasons=_field_errors.decode(reasons),
        raw=_s(raw),
        draft=None if draft is None else _draft.decode(draft),
        status=status,
        replayed_event_id=replayed_id,
        replayed_at=None if replayed_at is None else from_us(replayed_at),
    )


class _Job:
    __slots__ = ("events", "future", "quarantine", "size")

    def __init__(
        self,
        events: Sequence[Event | Refused],
        quarantine: Sequence[QuarantinedEvent],
        future: asyncio.Future[list[AppendOutcome]],
    ) -> None:
        self.events = events
        self.quarantine = quarantine
        self.future = future
        self.size = len(events) + len(quarantine)


class _Plan(NamedTuple):
    """What a group writes, and what each of its jobs is told."""

    outcomes: list[list[AppendOutcome]]
    events: list[list[Any]]  # the insert's columns
    refused: list[QuarantinedEvent]  # kept with a refused item


def _keys(jobs: Sequence[_Job]) -> tuple[list[KeyScope], list[KeyScope]]:
    """The distinct keys of a group, and those of them shaped like an event id."""
    keys = [(e.tenant, e.mode, e.idempotency_key) for j in jobs for e in j.events if e.idempotency_key is not None]
    keys = list(dict.fromkeys(keys))
    # An id holds no NUL; a key that does cannot name one (and a text parameter cannot hold it).
    ids = [k for k in keys if looks_like_event_id(k[2]) and "\x00" not in k[2]]
    return keys, ids


def _plan(
    jobs: Sequence[_Job],
    last_seq: int,
    by_key: dict[KeyScope, Original],
    by_id: dict[KeyScope, Original],
    partitions: int,
) -> _Plan:
    """Number a group's new events from `last_seq + 1`, in order; a key met before (stored, or
    earlier in the group) makes its item a duplicate of the original."""
    columns: list[list[Any]] = [[] for _ in range(14)]
    seqs, ids, tenants, modes, types, subjects, sources, channels, times, receiveds, keys, datas, violations, parts = (
        columns
    )
    outcomes: list[list[AppendOutcome]] = []
    refused: list[QuarantinedEvent] = []
    new_keys: dict[KeyScope, Original] = {}
    seq = last_seq
    # A batch shares one receive time, and events sent without a time share it too: convert
    # each distinct datetime object once.
    last_time: datetime | None = None
    last_us = 0
    for job in jobs:
        job_outcomes: list[AppendOutcome] = []
        outcomes.append(job_outcomes)
        for event in job.events:
            key = event.idempotency_key
            if key is not None:
                scope = (event.tenant, event.mode, key)
                original = new_keys.get(scope) or by_key.get(scope) or by_id.get(scope)
                if original is not None:
                    job_outcomes.append(AppendOutcome("duplicate", *original))
                    continue
            if isinstance(event, Refused):
                if event.quarantined is not None:
                    refused.append(event.quarantined)
                job_outcomes.append(AppendOutcome("refused", None, None, None))
                continue
            seq += 1
            partition = partition_of(event.tenant, event.mode, event.subject, partitions)
            if key is not None:
                new_keys[scope] = (event.id, seq, partition)
            received = event.received_at
            if received is not last_time:
                last_time, last_us = received, to_us(received)
            when = event.time
            seqs.append(seq)
            ids.append(event.id)
            tenants.append(event.tenant)
            modes.append(event.mode)
            types.append(event.type.encode())
            subjects.append(_b(event.subject))
            sources.append(_b(event.source))
            channels.append(_b(event.channel))
            times.append(last_us if when is received else to_us(when))
            receiveds.append(last_us)
            keys.append(_b(key))
            datas.append(bytes(event.data))
            violations.append(None if event.violations is None else _encode(event.violations).decode())
            parts.append(partition)
            job_outcomes.append(AppendOutcome("accepted", event.id, seq, partition))
    return _Plan(outcomes, columns, refused)


def _job_error(exc: Exception) -> BaseException:
    """What a failed job's waiter gets: a `StoreError` when the server failed under it (out of
    disk or memory, shut down, a serialization failure), so that callers retry rather than
    blame the job; the error itself when the job's rows were refused."""
    if isinstance(exc, StoreError):
        return exc
    if server_failed(exc):
        return unavailable(exc)
    return exc


def _settle(job: _Job, result: list[AppendOutcome] | None, error: BaseException | None) -> None:
    if job.future.done():  # the waiter went away (client disconnected)
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result or [])


Pause = Callable[[Literal["begun", "numbered"]], Awaitable[None]]


class PgLog(PgLogErasure):
    """The log, with one writer task per process that gathers concurrent appends into one
    transaction (see the module's docstring)."""

    def __init__(self, core: PgCore, queue_max_events: int = 200_000) -> None:
        self.core = core
        self.queue_max_events = queue_max_events
        self._jobs: Lanes[_Job] = Lanes(queue_max_events)
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        # For tests only: awaited inside an append's transaction, once it has begun ("begun",
        # before the sequencer's lock) and once its events are numbered ("numbered", just
        # before they are inserted and committed), to hold a transaction open at that point.
        self.pause: Pause | None = None

    @property
    def partitions(self) -> int:
        return self.core.partitions

    async def start(self) -> None:
        if self._writer is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="headwater-pg-writer")

    async def close(self) -> None:
        """Stop once the appends already queued are written."""
        self._stopping = True
        self._wake.set()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer

    # Appending

    async def append(
        self, events: Sequence[Event | Refused], quarantine: Sequence[QuarantinedEvent] = ()
    ) -> list[AppendOutcome]:
        if not events and not quarantine:
            return []
        if self._stopping or self._writer is None:
            raise StoreError("store is closed")
        job = _Job(events, quarantine, asyncio.get_running_loop().create_future())
        lane = events[0].tenant if events else quarantine[0].tenant
        if not self._jobs.admits(lane, job.size):
            raise Backpressure(retry_after=1)
        self._jobs.put(lane, job, job.size)
        metrics().queued(self._jobs.pending)
        self._wake.set()
        return await job.future

    async def _write_loop(self) -> None:
        while True:
            if not self._jobs:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = self._next_group()
            metrics().queued(self._jobs.pending)
            started = time.perf_counter()
            try:
                await self._write_group(jobs)
                metrics().group(sum(job.size for job in jobs), started)
            except BaseException as exc:  # the writer must go on, and no waiter hang
                for job in jobs:
                    _settle(job, None, StoreError(f"write failed: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise

    def _next_group(self) -> list[_Job]:
        return self._jobs.take(MAX_GROUP)

    async def _write_group(self, jobs: list[_Job]) -> None:
        """One transaction for the group; when it fails for a job's sake, each job again in a
        transaction of its own, so that the others do not fail with it."""
        try:
            outcomes = await self._transact(jobs)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
            error = _job_error(exc)
            if len(jobs) == 1 or isinstance(error, StoreError):
                for job in jobs:
                    _settle(job, None, error)
                return
            for job in jobs:
                try:
                    [alone] = await self._transact([job])
                except Exception as exc:  # noqa: BLE001 - handed to the waiting request
                    _settle(job, None, _job_error(exc))
                else:
                    _settle(job, alone, None)
            return
        for job, result in zip(jobs, outcomes, strict=True):
            _settle(job, result, None)

    async def _transact(self, jobs: Sequence[_Job]) -> list[list[AppendOutcome]]:
        quarantine = [q for job in jobs for q in job.quarantine]
        numbered = any(job.events for job in jobs)
        async with self.core.connection() as conn, conn.transaction(isolation="read_committed"):
            if self.pause is not None:
                await self.pause("begun")
            if quarantine:
                await conn.execute(INSERT_QUARANTINE, *_quarantine_columns(quarantine))
            if not numbered:
                return [[] for _ in jobs]
            # Its own statement: the next ones then take their snapshots after it was granted.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEQUENCER_LOCK)
            last_seq = int(await conn.fetchval(HIGHEST_OFFSET))
            by_key, by_id = await self._originals(conn, jobs)
            plan = _plan(jobs, last_seq, by_key, by_id, self.core.partitions)
            if self.pause is not None:
                await self.pause("numbered")
            if plan.events[0]:
                await conn.execute(INSERT_EVENTS, *plan.events)
            if plan.refused:
                await conn.execute(INSERT_QUARANTINE, *_quarantine_columns(plan.refused))
        return plan.outcomes

    @staticmethod
    async def _originals(
        conn: asyncpg.Connection, jobs: Sequence[_Job]
    ) -> tuple[dict[KeyScope, Original], dict[KeyScope, Original]]:
        keys, ids = _keys(jobs)
        if not keys:
            return {}, {}
        rows = await conn.fetch(
            FIND_ORIGINALS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2].encode() for k in keys],
            [k[0] for k in ids],
            [k[1] for k in ids],
            [k[2] for k in ids],
        )
        by_key: dict[KeyScope, Original] = {}
        by_id: dict[KeyScope, Original] = {}
        for is_id, i, id_, seq, partition in rows:
            if is_id:
                by_id[ids[i - 1]] = (id_, seq, partition)
            else:
                by_key[keys[i - 1]] = (id_, seq, partition)
        return by_key, by_id

    # Reading events

    async def get_event(self, tenant: str, mode: Mode, event_id: str) -> Event | None:
        if "\x00" in event_id:  # no id holds one, and a text parameter cannot
            return None
        row = await self.core.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE id = $1 AND tenant = $2 AND mode = $3", event_id, tenant, mode
        )
        return None if row is None else row_to_event(row)

    async def get_events(self, seqs: Sequence[int]) -> list[Event]:
        if not seqs:
            return []
        rows = await self.core.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1::bigint[]) ORDER BY seq", sorted(set(seqs))
        )
        return [row_to_event(r) for r in rows]

    async def query_events(self, query: EventQuery) -> list[Event]:
        sql, args = _page_sql(query)
        return [row_to_event(r) for r in await self.core.fetch(sql, *args)]

    async def read_log(self, after_seq: int, limit: int) -> list[Event]:
        rows = await self.core.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, limit
        )
        return [row_to_event(r) for r in rows]

    async def read_scope(self, tenant: str, mode: Mode, after_seq: int, upto_seq: int) -> list[Event]:
        # The LIMIT keeps the range a subquery of its own, read by the primary key: flattened,
        # the planner may take a (tenant, mode, ...) index and read all of the tenant's history.
        rows = await self.core.fetch(
            f"SELECT {EVENT_COLUMNS} FROM (SELECT * FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3)"
            " AS span WHERE tenant = $4 AND mode = $5 ORDER BY seq",
            after_seq,
            upto_seq,
            max(0, upto_seq - after_seq),
            tenant,
            mode,
        )
        return [row_to_event(r) for r in rows]

    async def read_summaries(self, after_seq: int, limit: int, sample: int) -> list[EventSummary]:
        rows = await self.core.fetch(
            "SELECT seq, tenant, mode, type, received_at, coalesce(violations, '[]') <> '[]',"
            " CASE WHEN seq % nullif($1, 0) = 0 THEN data END"
            " FROM events WHERE seq > $2 ORDER BY seq LIMIT $3",
            sample,
            after_seq,
            limit,
        )
        return [EventSummary(r[0], r[1], r[2], r[3].decode(), r[4], r[5], r[6]) for r in rows]

    async def read_partition(
        self, partition: int, after_seq: int, limit: int, scopes: frozenset[Scope] | None = None
    ) -> LogPage:
        # `end` may be the highest offset seen: every offset above it commits later (see the
        # module's docstring), so the consumer that goes on from there misses none. Ordered as
        # the partition's index is: without statistics (a new table) the planner otherwise
        # walked the primary key, past every other partition's events.
        async with self.core.connection() as conn:
            span = await conn.fetchrow(
                "SELECT count(*), max(seq) FROM"
                " (SELECT seq FROM events WHERE partition = $1 AND seq > $2 ORDER BY partition, seq LIMIT $3) AS span",
                partition,
                after_seq,
                limit,
            )
            examined, end = (0, after_seq) if span is None else span
            if not examined:
                return LogPage([], after_seq, 0)
            if scopes is not None and not scopes:
                return LogPage([], end, examined)
            sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE partition = $1 AND seq > $2 AND seq <= $3"
            args: list[Any] = [partition, after_seq, end]
            if scopes is not None:
                wanted = sorted(scopes)
                sql += " AND (tenant, mode) IN (SELECT * FROM unnest($4::text[], $5::text[]))"
                args += [[s[0] for s in wanted], [s[1] for s in wanted]]
            rows = await conn.fetch(sql + " ORDER BY partition, seq", *args)
        return LogPage([row_to_event(r) for r in rows], end, examined)

    async def head(self) -> int:
        return int(await self.core.fetchval("SELECT coalesce(max(seq), 0) FROM events"))

    async def partition_heads(self) -> dict[int, int]:
        # One backward look into (partition, seq) per partition, not a scan of the log.
        rows = await self.core.fetch(
            "SELECT p, (SELECT max(seq) FROM events WHERE partition = p) FROM generate_series(0, $1 - 1) AS p",
            self.core.partitions,
        )
        return {int(p): int(at) for p, at in rows if at is not None}

    async def count_after(self, partition: int, after_seq: int) -> int:
        return int(
            await self.core.fetchval(
                "SELECT count(*) FROM events WHERE partition = $1 AND seq > $2", partition, after_seq
            )
        )

    async def wait_appended(self, head: int, timeout: float) -> int:
        """Polls the head, which is one look at the primary key's last entry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = 0
        while True:
            now_head = await self.head()
            left = deadline - loop.time()
            if now_head > head or left <= 0:
                return now_head
            await asyncio.sleep(min(WAIT_STEPS[step] if step < len(WAIT_STEPS) else WAIT_STEADY, left))
            step += 1

    async def received_per_minute(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[int, int]]:
        # Bounded by the id range (ids are made in time order), with a minute's margin for the
        # clock of another machine that made ids.
        rows = await self.core.fetch(
            "SELECT received_at / 60000000 AS minute, count(*) FROM events"
            " WHERE id >= $1 AND tenant = $2 AND mode = $3 AND received_at >= $4 GROUP BY minute ORDER BY minute",
            id_floor("evt", since_us // 1000 - 60_000),
            tenant,
            mode,
            since_us,
        )
        return [(int(r[0]), int(r[1])) for r in rows]

    async def rejection_counts(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[str, int]]:
        rows = await self.core.fetch(
            "SELECT reason->>'code' AS code, count(*) AS n"
            " FROM quarantine, jsonb_array_elements(quarantine.reasons::jsonb) AS reason"
            " WHERE tenant = $1 AND mode = $2 AND status IN ('quarantined', 'replayed') AND id >= $3"
            " AND received_at >= $4 GROUP BY code ORDER BY n DESC, code",
            tenant,
            mode,
            id_floor("qua", since_us // 1000 - 60_000),
            since_us,
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    # Quarantine

    async def list_quarantine(self, query: QuarantineQuery) -> list[QuarantinedEvent]:
        where = ["tenant = $1", "mode = $2"]
        args: list[Any] = [query.tenant, query.mode]

        def add(condition: str, value: Any) -> None:
            args.append(value)
            where.append(condition.replace("?", f"${len(args)}"))

        if query.status is not None:
            add("status = ?", query.status)
        if query.type is not None:
            add("type = ?", query.type.encode())
        if query.before is not None:
            # No id holds a NUL: below "a\0b" is what is at or below "a".
            head, nul, _ = query.before.partition("\x00")
            add("id <= ?" if nul else "id < ?", head)
        if query.received_from is not None:
            add("received_at >= ?", to_us(query.received_from))
        if query.received_to is not None:
            add("received_at < ?", to_us(query.received_to))
        if query.ids:
            add("id = ANY(?::text[])", [i for i in query.ids if "\x00" not in i])
        args.append(query.limit)
        sql = (
            f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE {' AND '.join(where)}"
            f" ORDER BY id DESC LIMIT ${len(args)}"
        )
        return [_row_to_quarantined(r) for r in await self.core.fetch(sql, *args)]

    async def mark_replayed(self, tenant: str, mode: Mode, outcomes: Sequence[tuple[str, str]], at: datetime) -> None:
        if not outcomes:
            return
        await self.core.execute(
            "UPDATE quarantine AS q SET status = 'replayed', replayed_event_id = u.event_id, replayed_at = $3"
            " FROM unnest($1::text[], $2::text[]) AS u (id, event_id)"
            " WHERE q.id = u.id AND q.tenant = $4 AND q.mode = $5",
            [item_id for item_id, _ in outcomes],
            [event_id for _, event_id in outcomes],
            to_us(at),
            tenant,
            mode,
        )

    async def update_quarantine_reasons(
        self, tenant: str, mode: Mode, reasons: Sequence[tuple[str, list[FieldError]]]
    ) -> None:
        if not reasons:
            return
        await self.core.execute(
            "UPDATE quarantine AS q SET reasons = u.reasons"
            " FROM unnest($1::text[], $2::text[]) AS u (id, reasons)"
            " WHERE q.id = u.id AND q.tenant = $3 AND q.mode = $4",
            [item_id for item_id, _ in reasons],
            [_encode(errors).decode() for _, errors in reasons],
            tenant,
            mode,
        )


def _page_sql(query: EventQuery) -> tuple[str, list[Any]]:
    """A page newest `time` first. Several types: one index range scan per type (a lateral
    join), each stopping after `limit` rows, merged; so a page costs the same at any size."""
    where = ["tenant = $1", "mode = $2"]
    args: list[Any] = [query.tenant, query.mode]

    def add(condition: str, *values: Any) -> None:
        for value in values:
            args.append(value)
            condition = condition.replace("?", f"${len(args)}", 1)
        where.append(condition)

    if query.subject is not None:
        add("subject = ?", query.subject.encode())
    if query.source is not None:
        add("source = ?", query.source.encode())
    if query.time_from is not None:
        add("time >= ?", to_us(query.time_from))
    if query.time_to is not None:
        add("time < ?", to_us(query.time_to))
    if query.before is not None:
        add("(time, seq) < (?, ?)", to_us(query.before[0]), query.before[1])
    if query.processed is not None:
        # Only what a consumer has passed: each partition up to its checkpoint there (an array
        # indexed by partition + 1; a partition it has not passed reads 0).
        size = max(query.processed, default=-1) + 1
        checkpoints = [query.processed.get(p, 0) for p in range(size)]
        add("seq <= coalesce((?::bigint[])[partition + 1], 0)", checkpoints)
    order = "ORDER BY time DESC, seq DESC"
    if not query.types:
        args.append(query.limit)
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} {order} LIMIT ${len(args)}"
        return sql, args
    add("type = t.type")
    args.append([t.encode() for t in dict.fromkeys(query.types)])
    types = len(args)
    args.append(query.limit)
    sql = (
        f"SELECT e.* FROM unnest(${types}::bytea[]) AS t (type) CROSS JOIN LATERAL"
        f" (SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} {order} LIMIT ${len(args)}) AS e"
        f" {order} LIMIT ${len(args)}"
    )
    return sql, args
