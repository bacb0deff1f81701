"""The rate limits of keys and tenants, in the main file (their buckets are in memory: SQLite
serves from one process)."""

from __future__ import annotations

import sqlite3

from headwater.storage.registry import RateLimit
from headwater.storage.sqlite.core import SqliteCore

TENANT_DEFAULT = ""  # the key id of a tenant's default

LIMITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limits (
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    per_second REAL NOT NULL,
    burst INTEGER NOT NULL,
    PRIMARY KEY (tenant, key_id)
);
"""


class LimitTables(SqliteCore):
    SCHEMA = LIMITS_SCHEMA

    async def get_rate_limits(self, tenant: str, key_id: str) -> tuple[RateLimit | None, RateLimit | None]:
        sql = "SELECT key_id, per_second, burst FROM rate_limits WHERE tenant = ? AND key_id IN (?, ?)"

        def run(conn: sqlite3.Connection) -> dict[str, RateLimit]:
            return {k: RateLimit(rate, burst) for k, rate, burst in conn.execute(sql, (tenant, key_id, TENANT_DEFAULT))}

        found = await self.read(run)
        return found.get(key_id), found.get(TENANT_DEFAULT)

    async def put_rate_limit(self, tenant: str, key_id: str | None, limit: RateLimit | None) -> None:
        key = TENANT_DEFAULT if key_id is None else key_id
        args: tuple[object, ...]
        if limit is None:
            sql, args = "DELETE FROM rate_limits WHERE tenant = ? AND key_id = ?", (tenant, key)
        else:
            sql = "INSERT OR REPLACE INTO rate_limits (tenant, key_id, per_second, burst) VALUES (?, ?, ?, ?)"
            args = (tenant, key, limit.per_second, limit.burst)
        await self.write(lambda tx: tx.conn.execute(sql, args))
