"""Derived state on SQLite, in `derived.db` beside the log (see `derived_schema`).

Every worker process has its own writer for this file; the write lock (`core`) lets one
in at a time across processes, and each commit is short: the effects were planned before
the transaction began, and the transaction only checks the lease and the checkpoint and
writes rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.derived import Rebuild
from headwater.storage.effects import EffectBatch
from headwater.storage.records import DeadLetter
from headwater.storage.sqlite.core import Transaction
from headwater.storage.sqlite.derived_schema import DERIVED_SCHEMA, write_effects
from headwater.storage.sqlite.reads import ReadModels
from headwater.storage.sqlite.state import StateReadsOn

DEAD_LETTER_COLUMNS = (
    "id, consumer, partition, seq, event_id, tenant, mode, event_type, error, attempts, status, created_at, updated_at"
)
# How often a waiter looks at a checkpoint: soon at first (a worker applies a small batch in
# a few milliseconds), then every 10 ms.
WAIT_STEPS = (0.001, 0.002, 0.003, 0.005, 0.008)
WAIT_STEADY = 0.01
GROUP_ROWS = 20_000


def _row_to_dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    id_, consumer, partition, seq, event_id, tenant, mode, type_, error, attempts, status, created, updated = row
    return DeadLetter(
        id_, consumer, partition, seq, event_id, tenant, mode, type_, error, attempts, status,
        from_us(created), from_us(updated),
    )  # fmt: skip


def _dead_letter_row(d: DeadLetter) -> tuple[Any, ...]:
    return (
        d.id, d.consumer, d.partition, d.seq, d.event_id, d.tenant, d.mode, d.event_type, d.error, d.attempts,
        d.status, to_us(d.created_at), to_us(d.updated_at),
    )  # fmt: skip


UPSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES ({','.join('?' * 13)})"
    " ON CONFLICT (id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts,"
    " status = excluded.status, updated_at = excluded.updated_at"
)
SET_CHECKPOINT = (
    "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (consumer, partition) DO UPDATE SET seq = excluded.seq"
)


def apply_batch(conn: sqlite3.Connection, batch: EffectBatch) -> bool:
    """The batch's checks, then its writes; False (nothing written) when a check fails."""
    if batch.owner is not None:
        row = conn.execute("SELECT owner FROM leases WHERE name = ?", (batch.lease,)).fetchone()
        if row is None or row[0] != batch.owner:
            return False
    move = batch.checkpoint
    if move is not None:
        row = conn.execute(
            "SELECT seq FROM checkpoints WHERE consumer = ? AND partition = ?", (move.consumer, move.partition)
        ).fetchone()
        if (row[0] if row else 0) != move.expected:
            return False
    if batch.retried is not None:
        row = conn.execute("SELECT status FROM dead_letters WHERE id = ?", (batch.retried,)).fetchone()
        if row is None or row[0] != "retrying":
            return False
    write_effects(conn, batch.effects)
    if batch.dead_letters:
        conn.executemany(UPSERT_DEAD_LETTER, [_dead_letter_row(d) for d in batch.dead_letters])
    if move is not None and move.end != move.expected:
        conn.execute(SET_CHECKPOINT, (move.consumer, move.partition, move.end))
    return True


def _size(batch: EffectBatch) -> int:
    e = batch.effects
    return 1 + len(e.actions) + len(e.progress) + len(e.deliveries)


class SqliteDerived(ReadModels, StateReadsOn):
    SCHEMA = DERIVED_SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A consumer's effects need no fsync of their own (see `derived_schema`).
        kwargs.setdefault("synchronous", "NORMAL")
        # Batches of several partitions share a commit, but no transaction grows past this many
        # rows (about a tenth of a second): other workers, and this one's lease renewals, wait
        # for the write lock meanwhile.
        kwargs.setdefault("max_group", GROUP_ROWS)
        super().__init__(*args, **kwargs)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.read(lambda conn: fn(conn, *args))

    async def apply(self, batch: EffectBatch) -> bool:
        return await self.write(lambda tx: apply_batch(tx.conn, batch), size=_size(batch))

    # Positions and leases

    async def checkpoint(self, consumer: str, partition: int) -> int:
        row = await self.read(
            lambda conn: conn.execute(
                "SELECT seq FROM checkpoints WHERE consumer = ? AND partition = ?", (consumer, partition)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    async def checkpoints(self) -> dict[tuple[str, int], int]:
        rows = await self.read(lambda conn: conn.execute("SELECT consumer, partition, seq FROM checkpoints").fetchall())
        return {(consumer, partition): int(seq) for consumer, partition, seq in rows}

    async def leases(self, now: datetime) -> dict[str, str]:
        sql = "SELECT name, owner FROM leases WHERE expires_at > ?"
        rows = await self.read(lambda conn: conn.execute(sql, (to_us(now),)).fetchall())
        return {name: owner for name, owner in rows}

    async def heartbeat(self, owner: str, now: datetime, until: datetime) -> list[str]:
        def run(tx: Transaction) -> list[str]:
            tx.conn.execute(
                "INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
                (owner, to_us(until)),
            )
            tx.conn.execute("DELETE FROM workers WHERE expires_at <= ?", (to_us(now),))
            return [row[0] for row in tx.conn.execute("SELECT owner FROM workers ORDER BY owner")]

        return await self.write(run, first=True)

    async def take_leases(self, owner: str, names: Sequence[str], now: datetime, until: datetime) -> list[str]:
        wanted = list(names)

        def run(tx: Transaction) -> list[str]:
            tx.conn.executemany(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?",
                [(name, owner, to_us(until), to_us(now)) for name in wanted],
            )
            marks = ",".join("?" * len(wanted))
            sql = f"SELECT name FROM leases WHERE owner = ? AND name IN ({marks}) ORDER BY name"
            return [row[0] for row in tx.conn.execute(sql, (owner, *wanted))]

        return await self.write(run, first=True) if wanted else []

    async def release_leases(self, owner: str, names: Sequence[str]) -> None:
        wanted = list(names)

        def run(tx: Transaction) -> None:
            tx.conn.executemany("DELETE FROM leases WHERE owner = ? AND name = ?", [(owner, n) for n in wanted])

        if wanted:
            await self.write(run, first=True)

    async def leave(self, owner: str) -> None:
        """A worker that stops: its leases are free at once and it no longer counts as alive."""

        def run(tx: Transaction) -> None:
            tx.conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
            tx.conn.execute("DELETE FROM workers WHERE owner = ?", (owner,))

        await self.write(run)

    async def wait_checkpoint(self, consumers: Sequence[str], partition: int, seq: int, timeout: float) -> bool:
        """Polls the checkpoints: SQLite has no notification across processes, and a look is
        one primary-key read per consumer on a reader connection."""
        names = list(consumers)
        marks = ",".join("?" * len(names))
        sql = f"SELECT count(*) FROM checkpoints WHERE partition = ? AND seq >= ? AND consumer IN ({marks})"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = 0
        while True:
            row = await self.read(lambda conn: conn.execute(sql, (partition, seq, *names)).fetchone())
            if int(row[0]) == len(names):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(WAIT_STEPS[step] if step < len(WAIT_STEPS) else WAIT_STEADY, left))
            step += 1

    # Dead letters

    async def list_dead_letters(
        self, tenant: str, mode: Mode, before: int | None = None, limit: int = 100
    ) -> list[tuple[int, DeadLetter]]:
        sql = (
            f"SELECT position, {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE tenant = ? AND mode = ? AND position < ?"
            " ORDER BY position DESC LIMIT ?"
        )
        args = (tenant, mode, 2**63 - 1 if before is None else before, limit)
        return await self.read(lambda conn: [(r[0], _row_to_dead_letter(r[1:])) for r in conn.execute(sql, args)])

    async def get_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str) -> DeadLetter | None:
        sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ? AND tenant = ? AND mode = ?"
        row = await self.read(lambda conn: conn.execute(sql, (dead_letter_id, tenant, mode)).fetchone())
        return None if row is None else _row_to_dead_letter(row)

    async def retry_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str, at: datetime) -> DeadLetter | None:
        def run(tx: Transaction) -> DeadLetter | None:
            row = tx.conn.execute(
                "UPDATE dead_letters SET status = 'retrying', updated_at = ?"
                " WHERE id = ? AND tenant = ? AND mode = ? AND status = 'dead'"
                f" RETURNING {DEAD_LETTER_COLUMNS}",
                (to_us(at), dead_letter_id, tenant, mode),
            ).fetchone()
            return None if row is None else _row_to_dead_letter(row)

        return await self.write(run)

    async def retrying(self, partitions: Sequence[int]) -> list[DeadLetter]:
        wanted = list(partitions)
        if not wanted:
            return []
        sql = (
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE status = 'retrying'"
            f" AND partition IN ({','.join('?' * len(wanted))}) ORDER BY seq"
        )
        return await self.read(lambda conn: [_row_to_dead_letter(r) for r in conn.execute(sql, wanted)])

    # Replay

    async def rebuild(self) -> Rebuild:
        from headwater.storage.sqlite.rebuild import SqliteRebuild

        return await SqliteRebuild.open(self)
