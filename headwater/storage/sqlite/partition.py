"""One partition's derived state on SQLite: its own file, written by the worker that holds it.

The file holds the partition's lease, its consumers' checkpoints, its dead letters and every
row the consumers derive for its subjects, so a batch's write checks the lease, moves the
checkpoint by compare-and-set and writes the effects in one transaction of one file. The
state a consumer reads before it plans is read on the writer's connection, whose page cache
stays warm between batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.storage.effects import EffectBatch
from headwater.storage.records import DeadLetter, Position
from headwater.storage.sqlite.core import Transaction
from headwater.storage.sqlite.derived_schema import PARTITION_SCHEMA, write_effects
from headwater.storage.sqlite.leases import LeasedFile
from headwater.storage.sqlite.reads import ReadModels
from headwater.storage.sqlite.state import StateReadsOn

DEAD_LETTER_COLUMNS = (
    "id, consumer, partition, seq, event_id, tenant, mode, event_type, error, attempts, status, created_at, updated_at"
)
UPSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES ({','.join('?' * 13)})"
    " ON CONFLICT (id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts,"
    " status = excluded.status, updated_at = excluded.updated_at"
)
SET_CHECKPOINT = (
    "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (consumer, partition) DO UPDATE SET seq = excluded.seq"
)
# Batches of several consumers of the partition share a commit, but no transaction grows past
# this many rows (about a tenth of a second): a lease renewal waits for the write lock meanwhile.
GROUP_ROWS = 20_000
# Each file holds an eighth of the state (by default): a smaller page cache each.
PARTITION_CACHE_KIB = 16 * 1024


def row_to_dead_letter(row: tuple[Any, ...]) -> DeadLetter:
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


def batch_size(batch: EffectBatch) -> int:
    e = batch.effects
    return 1 + len(e.actions) + len(e.progress) + len(e.deliveries) + len(e.values) + len(e.fact_effects)


class PartitionFile(LeasedFile, ReadModels, StateReadsOn):
    SCHEMA = PARTITION_SCHEMA

    def __init__(self, *args: Any, partition: int, **kwargs: Any) -> None:
        # A consumer's effects need no fsync of their own (see `derived_schema`).
        kwargs.setdefault("synchronous", "NORMAL")
        kwargs.setdefault("max_group", GROUP_ROWS)
        kwargs.setdefault("cache_kib", PARTITION_CACHE_KIB)
        super().__init__(*args, **kwargs)
        self.partition = partition

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.read_on_writer(lambda conn: fn(conn, *args))

    async def apply(self, batch: EffectBatch) -> bool:
        return await self.write(lambda tx: apply_batch(tx.conn, batch), size=batch_size(batch))

    # Checkpoints

    async def checkpoint_reached(self, consumers: Sequence[str], seq: int) -> bool:
        names = list(consumers)
        marks = ",".join("?" * len(names))
        sql = f"SELECT count(*) FROM checkpoints WHERE seq >= ? AND consumer IN ({marks})"
        row = await self.read(lambda conn: conn.execute(sql, (seq, *names)).fetchone())
        return int(row[0]) == len(names)

    # Dead letters

    async def list_dead_letters(
        self, tenant: str, mode: Mode, before: Position | None, limit: int
    ) -> list[tuple[Position, DeadLetter]]:
        clause = f"tenant = ? AND mode = ?{' AND ' + self.before('created_at') if before else ''}"
        sql = (
            f"SELECT created_at, position, {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {clause}"
            " ORDER BY created_at DESC, position DESC LIMIT ?"
        )
        args = (tenant, mode, *(before or ()), limit)
        return await self.read(lambda conn: [(self.at(r), row_to_dead_letter(r[2:])) for r in conn.execute(sql, args)])

    async def get_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str) -> DeadLetter | None:
        sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ? AND tenant = ? AND mode = ?"
        row = await self.read(lambda conn: conn.execute(sql, (dead_letter_id, tenant, mode)).fetchone())
        return None if row is None else row_to_dead_letter(row)

    async def retry_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str, at: datetime) -> DeadLetter | None:
        def run(tx: Transaction) -> DeadLetter | None:
            row = tx.conn.execute(
                "UPDATE dead_letters SET status = 'retrying', updated_at = ?"
                " WHERE id = ? AND tenant = ? AND mode = ? AND status = 'dead'"
                f" RETURNING {DEAD_LETTER_COLUMNS}",
                (to_us(at), dead_letter_id, tenant, mode),
            ).fetchone()
            return None if row is None else row_to_dead_letter(row)

        return await self.write(run)

    async def retrying(self) -> list[DeadLetter]:
        sql = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE status = 'retrying' ORDER BY seq"
        return await self.read(lambda conn: [row_to_dead_letter(r) for r in conn.execute(sql)])
