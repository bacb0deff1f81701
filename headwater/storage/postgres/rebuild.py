"""`Rebuild` on PostgreSQL: empty copies of the rebuilt tables in a schema of their own,
filled by the replay, then copied over the live tables in one transaction.

The copies are made with `LIKE ... INCLUDING ALL` from the live tables (columns, keys,
indexes, defaults), so they are whatever the live schema is now. A `position` counts from 1
in a sequence of the copy's own, as a SQLite scratch file's rows do, so two rebuilds of one
log give identical tables; the swap moves the live sequence past the rows it swapped in.
One rebuild per database at a time: its own connection holds an advisory lock
for as long as it is open, which the server releases however that connection ends.

The swap first locks the checkpoints, then the live tables in the order a batch writes them,
in `EXCLUSIVE` mode: batches wait (and then find their checkpoint moved), readers go on
reading the old state until the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import asyncpg

from headwater.storage.derived import RebuildBusy, StateReads
from headwater.storage.effects import Effects
from headwater.storage.postgres.core import UNAVAILABLE, PgCore, unavailable
from headwater.storage.postgres.schema_derived import REBUILT_TABLES
from headwater.storage.postgres.state import PgState, columns, write_effects

SCHEMA = "headwater_rebuild"
# Held by the rebuild's connection (any constant; it names this use in pg_locks).
REBUILD_LOCK = 0x48575250  # "HWRP"
SET_CHECKPOINTS = (
    "INSERT INTO checkpoints (consumer, partition, seq) SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])"
    " ON CONFLICT (consumer, partition) DO UPDATE SET seq = excluded.seq"
)


async def _connect(core: PgCore) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(core.url)
        await conn.execute("SET synchronous_commit = on")
    except UNAVAILABLE as exc:
        raise unavailable(exc) from exc
    return conn


async def _counted(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(table, column) of the rebuilt tables' columns that a sequence numbers (`position`)."""
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ANY($1::text[]) AND column_default LIKE 'nextval(%' ORDER BY table_name, column_name",
        list(REBUILT_TABLES),
    )
    return [(r[0], r[1]) for r in rows]


class PgRebuild:
    def __init__(self, core: PgCore, conn: asyncpg.Connection) -> None:
        self.core = core
        self.conn = conn  # holds the lock; makes and swaps the schema
        self.state = PgState(core, f"{SCHEMA}.")

    @classmethod
    async def open(cls, core: PgCore) -> PgRebuild:
        conn = await _connect(core)
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
                raise RebuildBusy("another replay is running on this database")
            async with conn.transaction():
                # What a rebuild that died left, if any: this one holds the lock now.
                await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
                await conn.execute(f"CREATE SCHEMA {SCHEMA}")
                for table in REBUILT_TABLES:
                    await conn.execute(f"CREATE TABLE {SCHEMA}.{table} (LIKE {table} INCLUDING ALL)")
                for table, column in await _counted(conn):
                    sequence = f"{SCHEMA}.{table}_{column}_seq"
                    await conn.execute(f"CREATE SEQUENCE {sequence} OWNED BY {SCHEMA}.{table}.{column}")
                    await conn.execute(
                        f"ALTER TABLE {SCHEMA}.{table} ALTER COLUMN {column} SET DEFAULT nextval('{sequence}')"
                    )
        except UNAVAILABLE as exc:
            await conn.close()
            raise unavailable(exc) from exc
        except BaseException:
            await conn.close()
            raise
        return cls(core, conn)

    def partition(self, partition: int) -> StateReads:
        return self.state

    async def write(self, partition: int, effects: Effects) -> None:
        async with self.core.transaction() as conn:
            await write_effects(conn, partition, effects, f"{SCHEMA}.")

    async def swap(self, position: int, checkpoints: Sequence[tuple[str, int]]) -> dict[str, int]:
        rows: dict[str, int] = {}
        try:
            async with self.conn.transaction():
                await self.conn.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
                await self.conn.execute(f"LOCK TABLE {', '.join(REBUILT_TABLES)} IN EXCLUSIVE MODE")
                for table in REBUILT_TABLES:
                    await self.conn.execute(f"DELETE FROM {table}")
                    status = await self.conn.execute(f"INSERT INTO {table} SELECT * FROM {SCHEMA}.{table}")
                    rows[table] = int(status.split()[-1])  # "INSERT 0 <rows>"
                for table, column in await _counted(self.conn):
                    await self.conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                        f" coalesce(max({column}), 0) + 1, false) FROM {table}"
                    )
                await self.conn.execute(SET_CHECKPOINTS, *columns([(c, p, position) for c, p in checkpoints], 3))
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc
        return rows

    async def discard(self) -> None:
        if self.conn.is_closed():
            return
        try:
            with contextlib.suppress(*UNAVAILABLE):
                await self.conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        finally:
            await self.conn.close()  # and with it the lock
