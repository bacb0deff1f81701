"""Derived state on PostgreSQL: the tables of `schema_derived`, shared by every partition and
by any number of worker processes on any machines.

A batch is one transaction: its lease is checked with the lease's row held (a worker taking
the lease over waits for the batch to commit), the dead letter it retries with that row
locked, and its checkpoint moves by compare-and-set in one statement, whose row lock then
orders the batches of one consumer. Leases are taken by an upsert that only changes a row that
is free, expired or the taker's, so two workers never both hold one. The read models come from
`PgDerivedReads` (`derived_reads`); the bulk reads a consumer plans with and the write of
effects from `state`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from headwater.clock import from_us, to_us
from headwater.events import Mode
from headwater.partitions import partition_of
from headwater.storage.derived import Rebuild, StateReads
from headwater.storage.effects import CheckpointMove, EffectBatch, NewDelivery
from headwater.storage.postgres.derived_reads import PgDerivedReads
from headwater.storage.postgres.protection import PgDerivedErasure
from headwater.storage.postgres.state import PgState, columns, last_by, write_deliveries, write_effects
from headwater.storage.records import DeadLetter, Position
from headwater.storage.sqlite.derived import WAIT_STEADY, WAIT_STEPS

DEAD_LETTER_COLUMNS = (
    "id, consumer, partition, seq, event_id, tenant, mode, event_type, error, attempts, status, created_at, updated_at"
)
UPSERT_DEAD_LETTERS = (
    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS})"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[],"
    " $8::text[], $9::text[], $10::int[], $11::text[], $12::bigint[], $13::bigint[])"
    " ON CONFLICT (id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts,"
    " status = excluded.status, updated_at = excluded.updated_at"
)


class _Refused(Exception):
    """A check of the batch failed: its transaction rolls back."""


def row_to_dead_letter(row: asyncpg.Record | tuple[Any, ...]) -> DeadLetter:
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


async def _move_checkpoint(conn: asyncpg.Connection, move: CheckpointMove) -> bool:
    """Compare-and-set: a concurrent move of the same checkpoint waits for this transaction,
    then finds the value it expected gone."""
    key = (move.consumer, move.partition)
    if move.end == move.expected:
        seq = await conn.fetchval("SELECT seq FROM checkpoints WHERE consumer = $1 AND partition = $2 FOR UPDATE", *key)
        return (seq or 0) == move.expected
    if move.expected == 0:  # no row is a checkpoint at 0
        done = await conn.fetchval(
            "INSERT INTO checkpoints AS c (consumer, partition, seq) VALUES ($1, $2, $3)"
            " ON CONFLICT (consumer, partition) DO UPDATE SET seq = excluded.seq WHERE c.seq = 0 RETURNING true",
            *key,
            move.end,
        )
    else:
        done = await conn.fetchval(
            "UPDATE checkpoints SET seq = $3 WHERE consumer = $1 AND partition = $2 AND seq = $4 RETURNING true",
            *key,
            move.end,
            move.expected,
        )
    return bool(done)


async def _apply(conn: asyncpg.Connection, batch: EffectBatch) -> None:
    """The batch's checks, then its writes; `_Refused` when a check fails. The checkpoint is
    locked before any derived table (as `rebuild`'s swap does), so the two never deadlock."""
    if batch.owner is not None:
        owner = await conn.fetchval("SELECT owner FROM leases WHERE name = $1 FOR SHARE", batch.lease)
        if owner != batch.owner:
            raise _Refused
    if batch.retried is not None:
        status = await conn.fetchval("SELECT status FROM dead_letters WHERE id = $1 FOR UPDATE", batch.retried)
        if status != "retrying":
            raise _Refused
    if batch.checkpoint is not None and not await _move_checkpoint(conn, batch.checkpoint):
        raise _Refused
    await write_effects(conn, batch.partition, batch.effects)
    if batch.dead_letters:
        rows = [_dead_letter_row(d) for d in last_by(batch.dead_letters, lambda d: d.id)]
        await conn.execute(UPSERT_DEAD_LETTERS, *columns(rows, 13))


class PgDerived(PgDerivedReads, PgDerivedErasure):
    # A consumer's own partition

    def partition(self, partition: int) -> StateReads:
        return PgState(self.core)

    async def apply(self, batch: EffectBatch) -> bool:
        try:
            async with self.core.transaction() as conn:
                await _apply(conn, batch)
        except _Refused:
            return False
        return True

    async def enqueue(self, deliveries: Sequence[NewDelivery]) -> None:
        """Messages outside any batch (an endpoint's test message) go to the endpoint's partition."""
        count = self.core.partitions
        rows = [(partition_of(d.tenant, d.mode, d.endpoint_id, count), d) for d in deliveries]
        async with self.core.transaction() as conn:
            await write_deliveries(conn, rows)

    # Positions and leases

    async def checkpoint(self, consumer: str, partition: int) -> int:
        seq = await self.core.fetchval(
            "SELECT seq FROM checkpoints WHERE consumer = $1 AND partition = $2", consumer, partition
        )
        return int(seq or 0)

    async def checkpoints(self) -> dict[tuple[str, int], int]:
        rows = await self.core.fetch("SELECT consumer, partition, seq FROM checkpoints")
        return {(consumer, partition): int(seq) for consumer, partition, seq in rows}

    async def leases(self, now: datetime) -> dict[str, str]:
        rows = await self.core.fetch("SELECT name, owner FROM leases WHERE expires_at > $1", to_us(now))
        return {name: owner for name, owner in rows}

    async def heartbeat(self, owner: str, now: datetime, until: datetime) -> list[str]:
        async with self.core.transaction() as conn:
            await conn.execute(
                "INSERT INTO workers (owner, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
                owner,
                to_us(until),
            )
            await conn.execute("DELETE FROM workers WHERE expires_at <= $1", to_us(now))
            rows = await conn.fetch("SELECT owner FROM workers")
        return sorted(row[0] for row in rows)

    async def take_leases(self, owner: str, names: Sequence[str], now: datetime, until: datetime) -> list[str]:
        # The upsert locks each row it finds and decides on its newest version: of two
        # workers taking the same expired lease at once, the second finds it the first's.
        # Sorted, so that two takers lock rows in the same order.
        rows = await self.core.fetch(
            "INSERT INTO leases AS l (name, owner, expires_at) SELECT n, $2, $3 FROM unnest($1::text[]) AS n"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
            " WHERE l.owner = excluded.owner OR l.expires_at <= $4 RETURNING name",
            sorted(set(names)),
            owner,
            to_us(until),
            to_us(now),
        )
        return sorted(row[0] for row in rows)

    async def release_leases(self, owner: str, names: Sequence[str]) -> None:
        await self.core.execute("DELETE FROM leases WHERE owner = $1 AND name = ANY($2::text[])", owner, list(names))

    async def leave(self, owner: str) -> None:
        async with self.core.transaction() as conn:
            await conn.execute("DELETE FROM leases WHERE owner = $1", owner)
            await conn.execute("DELETE FROM workers WHERE owner = $1", owner)

    async def wait_checkpoint(self, consumers: Sequence[str], partition: int, seq: int, timeout: float) -> bool:
        """Polls the partition's checkpoints, as the SQLite backend does: a look is one
        primary-key read."""
        names = sorted(set(consumers))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = 0
        while await self.core.fetchval(
            "SELECT count(*) FROM checkpoints WHERE consumer = ANY($1::text[]) AND partition = $2 AND seq >= $3",
            names,
            partition,
            seq,
        ) != len(names):
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(WAIT_STEPS[step] if step < len(WAIT_STEPS) else WAIT_STEADY, left))
            step += 1
        return True

    # Dead letters

    async def list_dead_letters(
        self, tenant: str, mode: Mode, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeadLetter]]:
        after = " AND (created_at, partition, position) < ($4, $5, $6)" if before else ""
        rows = await self.core.fetch(
            f"SELECT created_at, partition, position, {DEAD_LETTER_COLUMNS} FROM dead_letters"
            f" WHERE tenant = $1 AND mode = $2{after}"
            " ORDER BY created_at DESC, partition DESC, position DESC LIMIT $3",
            tenant,
            mode,
            limit,
            *(before or ()),
        )
        return [(Position(r[0], r[1], r[2]), row_to_dead_letter(tuple(r)[3:])) for r in rows]

    async def get_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str) -> DeadLetter | None:
        row = await self.core.fetchrow(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1 AND tenant = $2 AND mode = $3",
            dead_letter_id,
            tenant,
            mode,
        )
        return None if row is None else row_to_dead_letter(row)

    async def retry_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str, at: datetime) -> DeadLetter | None:
        row = await self.core.fetchrow(
            "UPDATE dead_letters SET status = 'retrying', updated_at = $1"
            " WHERE id = $2 AND tenant = $3 AND mode = $4 AND status = 'dead'"
            f" RETURNING {DEAD_LETTER_COLUMNS}",
            to_us(at),
            dead_letter_id,
            tenant,
            mode,
        )
        return None if row is None else row_to_dead_letter(row)

    async def retrying(self, partitions: Sequence[int]) -> list[DeadLetter]:
        """In the order of `partitions`, then of the log."""
        rows = await self.core.fetch(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE status = 'retrying' AND partition = ANY($1::int[])"
            " ORDER BY array_position($1::int[], partition), seq, position",
            list(partitions),
        )
        return [row_to_dead_letter(r) for r in rows]

    # Replay

    async def rebuild(self) -> Rebuild:
        from headwater.storage.postgres.rebuild import PgRebuild

        return await PgRebuild.open(self.core)
