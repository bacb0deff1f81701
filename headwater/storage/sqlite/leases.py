"""Leases and checkpoints, which both the partition files and the shared file hold.

A lease is a row (name, owner, expires µs): taking it succeeds when the row is free, expired or
already the taker's, so renewal and takeover are one statement. Checkpoints are (consumer,
partition) -> the last sequence number applied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from headwater.clock import to_us
from headwater.storage.sqlite.core import SqliteCore, Transaction

TAKE_LEASE = (
    "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
    " owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE leases.owner = excluded.owner OR leases.expires_at <= ?"
)


def take_leases(
    conn: sqlite3.Connection, owner: str, names: Sequence[str], now: datetime, until: datetime
) -> list[str]:
    conn.executemany(TAKE_LEASE, [(name, owner, to_us(until), to_us(now)) for name in names])
    marks = ",".join("?" * len(names))
    sql = f"SELECT name FROM leases WHERE owner = ? AND name IN ({marks}) ORDER BY name"
    return [row[0] for row in conn.execute(sql, (owner, *names))]


class LeasedFile(SqliteCore):
    async def checkpoints(self) -> dict[tuple[str, int], int]:
        rows = await self.read(lambda conn: conn.execute("SELECT consumer, partition, seq FROM checkpoints").fetchall())
        return {(consumer, partition): int(seq) for consumer, partition, seq in rows}

    async def lease_owners(self) -> dict[str, tuple[str, int]]:
        """name -> (owner, expires µs) of the leases this file holds, expired ones included."""
        rows = await self.read(lambda conn: conn.execute("SELECT name, owner, expires_at FROM leases").fetchall())
        return {name: (owner, expires) for name, owner, expires in rows}

    async def take_leases(self, owner: str, names: Sequence[str], now: datetime, until: datetime) -> list[str]:
        return await self.write(lambda tx: take_leases(tx.conn, owner, names, now, until), first=True)

    async def release_leases(self, owner: str, names: Sequence[str]) -> None:
        def run(tx: Transaction) -> None:
            tx.conn.executemany("DELETE FROM leases WHERE owner = ? AND name = ?", [(owner, n) for n in names])

        await self.write(run, first=True)
