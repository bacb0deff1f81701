"""`headwater replay`: rebuild every table derived from the log, then swap it in.

Rebuilt: challenge progress and completions, the effects /sync shows, badges, the points
ledger and totals (the facts consumer's tables), and the trigger state: rolling windows,
actions, journey enrolments and subject profiles. Not rebuilt: definitions, the event log itself, the
catalog, and the webhook outbox, whose delivery ids derive from (endpoint, message) so that
nothing already sent is sent again.

How:
1. A scratch SQLite file beside the store holds empty copies of the derived tables (same
   DDL, read from the store). The store is attached to it read-only, so definitions,
   settings and webhook endpoints are read from the store, and nothing but the scratch
   tables can be written.
2. The whole log is applied in order, batch by batch, with the consumers' own functions
   (`apply_facts`, then `apply_triggers` per event at its receive time): the same code, on
   fresh state. Award events the rebuild makes are appended to the log through the store
   after each batch; their idempotency keys make the ones already there no-ops, and the
   rebuild reaches the new ones like any other event. Webhook messages the rebuild would
   enqueue are dropped (see 4).
3. When the rebuild has caught up with the log (a server may be ingesting all along), it
   waits until the live trigger consumer has checkpointed past the rebuilt position
   (helping it along from this process; consumers take turns by compare-and-set on their
   checkpoint), so every webhook message up to there is already in the outbox.
4. One transaction on the store replaces the contents of each derived table with the
   rebuilt one and sets the facts and triggers checkpoints to the rebuilt position. Running
   consumers notice the moved checkpoint and apply the rest of the log on the new state,
   re-enqueuing (as no-ops) the messages of events they had already seen.

Nothing derived reads the clock (facts are processed "at" their event's receive time,
progress and awards happen at event time, trigger actions are created at the receive time),
so rebuilding twice from the same log gives identical tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from headwater.clock import system_now
from headwater.events import Event
from headwater.processing.consumer import TriggerConsumer
from headwater.processing.facts import FactsConsumer, apply_facts
from headwater.processing.gamification import ChallengeSet, GamificationLoader, Scope
from headwater.processing.triggers import Routing, TriggerLoader, apply_triggers
from headwater.storage.base import Store
from headwater.storage.sqlite import SqliteState, SqliteStore
from headwater.storage.sqlite_gamification import DERIVED_TABLES

TRIGGER_TABLES = ("trigger_windows", "actions", "enrollments", "profiles")
REBUILT_TABLES = (*DERIVED_TABLES, *TRIGGER_TABLES)
# Written by the trigger engine but not rebuilt: a scratch copy takes the writes and is emptied.
SCRATCH_ONLY = ("webhook_deliveries",)
CONSUMERS = (FactsConsumer.NAME, TriggerConsumer.NAME)
LOCK_FILE = "replay.lock"

Progress = Callable[[int, int], None]


@dataclass
class ReplayResult:
    events: int  # events applied
    position: int  # the log offset the rebuilt state covers
    appended: int  # award events the rebuild added to the log
    rows: dict[str, int]  # rows per rebuilt table


class _ScratchState(SqliteState):
    """`ProcessingState` on the scratch connection: appended events are collected, to be
    appended to the log through the store once the batch is committed."""

    def __init__(self, conn: sqlite3.Connection, appended: list[Event]) -> None:
        self.conn = conn
        self._appended = appended

    def append_events(self, events: Sequence[Event]) -> list[bool]:
        self._appended.extend(events)
        return [True] * len(events)


def _create_scratch(live: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    tables = (*REBUILT_TABLES, *SCRATCH_ONLY)
    marks = ",".join("?" * len(tables))
    ddl = live.execute(
        f"SELECT type, sql FROM sqlite_master WHERE tbl_name IN ({marks}) AND sql IS NOT NULL"
        " ORDER BY type = 'index', name",
        tables,
    ).fetchall()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=True)
    conn.execute("PRAGMA journal_mode = OFF")  # a throwaway file: a crash means starting over
    conn.execute("PRAGMA synchronous = OFF")
    for _, sql in ddl:
        conn.execute(sql)
    return conn


class ReplayBusy(Exception):
    """Another replay holds this data dir."""


@contextlib.contextmanager
def _replay_lock(path: Path) -> Iterator[None]:
    """One replay per data dir at a time: a second one would rebuild the same state for
    nothing, and its swap could set the derived tables back to an older position. The OS
    releases the lock when the process ends, however it ends."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReplayBusy(f"another replay is running on {path.parent}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Replay:
    def __init__(self, store: Store, batch_size: int = 2000) -> None:
        if not isinstance(store, SqliteStore):
            raise TypeError("replay works on the SQLite store")
        self.store = store
        self.batch_size = batch_size
        self.gamification = GamificationLoader(store)
        self.triggers = TriggerLoader(store)
        self.scratch_path = store.path.parent / f"replay-{uuid.uuid4().hex}.db"

    async def head(self) -> int:
        row = await self.store.read(lambda conn: conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone())
        return int(row[0])

    async def checkpoint(self, consumer: str) -> int:
        row = await self.store.read(
            lambda conn: conn.execute("SELECT seq FROM checkpoints WHERE consumer = ?", (consumer,)).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def run(self, progress: Progress | None = None) -> ReplayResult:
        with _replay_lock(self.store.path.parent / LOCK_FILE):
            return await self._run(progress)

    async def _run(self, progress: Progress | None) -> ReplayResult:
        live = sqlite3.connect(self.store.path, isolation_level=None)
        try:
            scratch = _create_scratch(live, self.scratch_path)
        finally:
            live.close()
        try:
            scratch.execute("ATTACH DATABASE ? AS live", (f"file:{self.store.path}?mode=ro",))
            position, applied, appended = await self._rebuild(scratch, progress)
            await self._trigger_consumer_past(position)
            rows = await asyncio.to_thread(self._swap, position)
            return ReplayResult(applied, position, appended, rows)
        finally:
            scratch.close()
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self.scratch_path}{suffix}").unlink()

    async def _rebuild(self, scratch: sqlite3.Connection, progress: Progress | None) -> tuple[int, int, int]:
        position = applied = appended = 0
        while True:
            events = await self.store.read_log(position, self.batch_size)
            if not events:
                return position, applied, appended
            scopes = {(e.tenant, e.mode) for e in events}
            challenges = await self.gamification.sets_for({(e.tenant, e.mode) for e in events if e.subject})
            routes = await self.triggers.routes_for(scopes)
            new_events: list[Event] = []
            await asyncio.to_thread(self._apply, scratch, events, challenges, routes, new_events)
            if new_events:
                outcomes = await self.store.append(new_events)
                appended += sum(1 for o in outcomes if o.status == "accepted")
            position = events[-1].seq or position
            applied += len(events)
            if progress is not None:
                progress(position, await self.head())

    @staticmethod
    def _apply(
        scratch: sqlite3.Connection,
        events: Sequence[Event],
        challenges: dict[Scope, ChallengeSet],
        routes: dict[Scope, Routing],
        new_events: list[Event],
    ) -> None:
        scratch.execute("BEGIN")
        try:
            state = _ScratchState(scratch, new_events)
            apply_facts(state, events, challenges, system_now())
            for event in events:
                # The live consumer stamps actions with its clock; here the receive time stands in.
                apply_triggers(state, [event], routes, event.received_at)
            for table in SCRATCH_ONLY:
                scratch.execute(f"DELETE FROM main.{table}")
            scratch.execute("COMMIT")
        except BaseException:
            scratch.execute("ROLLBACK")
            raise

    async def _trigger_consumer_past(self, position: int) -> None:
        """Until the stored trigger checkpoint reaches `position`, every message up to there
        may not be in the outbox yet: help the trigger consumer along from this process."""
        helper = TriggerConsumer(self.store, self.triggers, checkpoint_seconds=0.0)
        while await self.checkpoint(TriggerConsumer.NAME) < position:
            if not await helper.run_once():
                await asyncio.sleep(0.05)

    def _swap(self, position: int) -> dict[str, int]:
        conn = sqlite3.connect(self.store.path, isolation_level=None, timeout=self.store.busy_timeout_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.store.busy_timeout_ms}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("ATTACH DATABASE ? AS scratch", (str(self.scratch_path),))
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows: dict[str, int] = {}
                for table in REBUILT_TABLES:
                    conn.execute(f"DELETE FROM main.{table}")
                    conn.execute(f"INSERT INTO main.{table} SELECT * FROM scratch.{table}")
                    rows[table] = conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
                conn.executemany(
                    "INSERT INTO checkpoints VALUES (?, ?) ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
                    [(name, position) for name in CONSUMERS],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return rows
        finally:
            conn.close()
