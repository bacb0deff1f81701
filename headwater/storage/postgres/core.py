"""The connection pool every PostgreSQL module shares, the schema's version, and how a
failure of the server becomes a `StoreError` (a 503 for the client, a retry for a worker).

The schema is versioned in `schema_version`: `migrate` brings a database up to date (an empty
database is created at start, under the same lock); a database of another version is refused
at start with the command that fixes it. `partitions` is recorded at first start, like a
SQLite data dir's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg

from headwater.partitions import DEFAULT_PARTITIONS
from headwater.storage.base import IncompatibleStore, StorageFull, StoreError
from headwater.storage.postgres.schema import MIGRATIONS, Migrations

# Held while a schema is created or migrated, so that processes starting together on an empty
# database do not both create it (any constant; it names this use in pg_locks).
MIGRATION_LOCK = 0x48574D31  # "HWM1"

# What a server that is down, restarting or refusing connections raises: the write is not
# acknowledged, and the caller may retry.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # A connection the server dropped mid-operation can fail its reset on release like this.
    asyncpg.exceptions.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    TimeoutError,
)


# SQLSTATE classes of a server that failed, not of a statement that was wrong: the connection
# (08), a deadlock or serialization failure (40), a full disk or too many connections (53), a
# lock given up on (55P03), a shutdown or cancel (57), an I/O error (58), an internal error (XX),
# and a server that takes no writes (25006: read-only, a standby, a demoted primary).
# A consumer must wait and try its batch again, not take an event of it for poison.
SERVER_FAILURES = ("08", "25006", "40", "53", "55P03", "57", "58", "XX")


def server_failed(exc: BaseException) -> bool:
    if isinstance(exc, UNAVAILABLE):
        return True
    state = str(getattr(exc, "sqlstate", "") or "")
    return isinstance(exc, asyncpg.PostgresError) and state.startswith(SERVER_FAILURES)


DISK_FULL = "53100"


def unavailable(exc: BaseException) -> StoreError:
    """A full disk is its own error (the API answers 507, not 503); both are for retrying."""
    kind = StorageFull if getattr(exc, "sqlstate", None) == DISK_FULL else StoreError
    return kind(f"PostgreSQL is unavailable: {type(exc).__name__}: {exc}".rstrip(": "))


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The schema's version; 0 for an empty database; None when it has tables but no version
    (not a Headwater database)."""
    if await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        return None if found is None else int(found)
    tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
    return 0 if tables == 0 else None


async def migrate(conn: asyncpg.Connection, migrations: Migrations = MIGRATIONS) -> tuple[int, int]:
    """Bring the database up to the last of `migrations`; (version before, version after)."""
    latest = migrations[-1][0]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        before = await schema_version(conn)
        if before is None:
            raise IncompatibleStore(FOREIGN)
        if before > latest:
            raise IncompatibleStore(_newer(before, latest))
        for version, statements in migrations:
            if version <= before:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, now())", version)
    return before, latest


FOREIGN = (
    "this database holds tables that are not Headwater's (it has no schema_version table):"
    " give Headwater a database of its own"
)


def _newer(found: int, latest: int) -> str:
    return (
        f"this database's schema is version {found}, newer than this Headwater's ({latest}):"
        " run the Headwater release that migrated it, or a newer one"
    )


# A server that is starting, stopping or unreachable must become a `StoreError` the caller can
# retry, not a wait without end (asyncpg waits 60 s to connect and for ever for a connection).
CONNECT_SECONDS = 5.0
ACQUIRE_SECONDS = 10.0

# Every acknowledgement waits for the commit to be on disk, whatever the server's default; no JIT:
# its compile time is far more than the short queries of ingest and processing take to run.
SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "headwater", "jit": "off"}


async def _reset(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool. asyncpg's default (`RESET ALL`,
    `UNLISTEN *`, `CLOSE ALL`, advisory unlock) is a round trip on every release: 10% of a
    worker's time polling the log's head. A pooled connection here never has session state
    (no SET, LISTEN, cursor or session lock: the rebuild's lock has a connection of its own),
    so only a transaction left open, by a bug, is undone."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PgCore:
    """The pool, opened at `start`; `connection()` and `transaction()` turn an unavailable
    server into `StoreError`."""

    def __init__(
        self, url: str, *, pool_size: int = 10, partitions: int | None = None, migrations: Migrations = MIGRATIONS
    ) -> None:
        self.url = url
        self.migrations = migrations
        self.pool_size = pool_size
        self._wanted_partitions = partitions
        self.partitions = partitions or DEFAULT_PARTITIONS
        self._pool: asyncpg.Pool | None = None
        self._starts = 0

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not started")
        return self._pool

    async def start(self) -> None:
        """Open the pool (once however many parts of the store start it) and check the schema."""
        self._starts += 1
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                server_settings=SERVER_SETTINGS,
                timeout=CONNECT_SECONDS,
                reset=_reset,
            )
        except UNAVAILABLE as exc:
            self._starts -= 1
            raise unavailable(exc) from exc
        except asyncpg.PostgresError as exc:  # a wrong database name, user or password
            self._starts -= 1
            raise StoreError(f"PostgreSQL refused the connection: {exc}") from exc
        try:
            async with pool.acquire() as proxy:
                conn = cast(asyncpg.Connection, proxy)
                await self._check_schema(conn)
                self.partitions = await self._record_partitions(conn)
        except BaseException:
            self._starts -= 1
            await pool.close()
            raise
        self._pool = pool

    async def _check_schema(self, conn: asyncpg.Connection) -> None:
        found, latest = await schema_version(conn), self.migrations[-1][0]
        if found == 0:
            await migrate(conn, self.migrations)  # an empty database: zero set-up, as on SQLite
        elif found is None:
            raise IncompatibleStore(FOREIGN)
        elif found < latest:
            raise IncompatibleStore(
                f"this database's schema is version {found}, older than this Headwater's ({latest}):"
                " run `headwater migrate` to bring it up to date"
            )
        elif found > latest:
            raise IncompatibleStore(_newer(found, latest))

    async def _record_partitions(self, conn: asyncpg.Connection) -> int:
        await conn.execute(
            "INSERT INTO meta (name, value) VALUES ('partitions', $1) ON CONFLICT (name) DO NOTHING",
            str(self.partitions),
        )
        recorded = int(await conn.fetchval("SELECT value FROM meta WHERE name = 'partitions'"))
        if self._wanted_partitions is not None and self._wanted_partitions != recorded:
            raise IncompatibleStore(
                f"HEADWATER_PARTITIONS={self._wanted_partitions} does not match this database, created with"
                f" {recorded} partitions: the count cannot change (leave it unset, or set it to {recorded})"
            )
        return recorded

    async def close(self) -> None:
        self._starts = max(0, self._starts - 1)
        if self._starts == 0 and self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*UNAVAILABLE):
                await pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire(timeout=ACQUIRE_SECONDS) as conn:
                yield cast(asyncpg.Connection, conn)  # the pool's proxy forwards every method
        except Exception as exc:
            if server_failed(exc):
                raise unavailable(exc) from exc
            raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire(timeout=ACQUIRE_SECONDS) as conn, conn.transaction():
                yield cast(asyncpg.Connection, conn)
        except Exception as exc:
            if server_failed(exc):
                raise unavailable(exc) from exc
            raise

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as conn:
            return str(await conn.execute(sql, *args))

    async def ping(self) -> None:
        """Ready means it takes writes: a standby or a read-only database is not ready."""
        if await self.fetchval("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"):
            raise StoreError("PostgreSQL takes no writes (a standby, or a read-only database)")


async def migrate_database(url: str, migrations: Migrations = MIGRATIONS) -> tuple[int, int]:
    """`headwater migrate`: bring the database at `url` up to date; (version before, after)."""
    try:
        conn = await asyncpg.connect(url)
    except UNAVAILABLE as exc:
        raise unavailable(exc) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"PostgreSQL refused the connection: {exc}") from exc
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()
