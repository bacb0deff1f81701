"""Rate limits on PostgreSQL: the limits of keys and tenants, and the buckets every API process
shares (without a bus; with one, the buckets are in Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.storage.buckets import Taken
from headwater.storage.registry import RateLimit

if TYPE_CHECKING:  # core imports the schema, which imports this module's tables
    from headwater.storage.postgres.core import PgCore

TENANT_DEFAULT = ""  # the key id of a tenant's default

LIMITS_DDL: list[str] = [
    """CREATE TABLE rate_limits (
        tenant text COLLATE "C" NOT NULL,
        key_id text COLLATE "C" NOT NULL,
        per_second double precision NOT NULL,
        burst bigint NOT NULL,
        PRIMARY KEY (tenant, key_id)
    )""",
    # Unlogged: a bucket is a few seconds of state, not worth a WAL write per request (a crash
    # empties the table, and every bucket starts full again).
    """CREATE UNLOGGED TABLE rate_buckets (
        bucket text COLLATE "C" PRIMARY KEY,
        tokens double precision NOT NULL,
        at double precision NOT NULL,
        granted boolean NOT NULL
    )""",
]

# One statement, atomic under concurrent requests (the row lock of the upsert), timed by the
# database's clock so that API processes on machines with skewed clocks agree.
TAKE = """
WITH now AS (SELECT extract(epoch FROM clock_timestamp())::double precision AS t)
INSERT INTO rate_buckets AS b (bucket, tokens, at, granted)
SELECT $1, $2::double precision - $3, now.t, true FROM now
ON CONFLICT (bucket) DO UPDATE SET
    granted = least($2, b.tokens + greatest(0, excluded.at - b.at) * $4) >= $3,
    tokens = least($2, b.tokens + greatest(0, excluded.at - b.at) * $4)
        - CASE WHEN least($2, b.tokens + greatest(0, excluded.at - b.at) * $4) >= $3 THEN $3 ELSE 0 END,
    at = greatest(b.at, excluded.at)
RETURNING granted, tokens
"""


class PgLimits:
    """The registry's rate-limit methods (mixed into `PgRegistry`)."""

    core: PgCore

    async def get_rate_limits(self, tenant: str, key_id: str) -> tuple[RateLimit | None, RateLimit | None]:
        rows = await self.core.fetch(
            "SELECT key_id, per_second, burst FROM rate_limits WHERE tenant = $1 AND key_id = ANY($2::text[])",
            tenant,
            [key_id, TENANT_DEFAULT],
        )
        found = {row["key_id"]: RateLimit(row["per_second"], row["burst"]) for row in rows}
        return found.get(key_id), found.get(TENANT_DEFAULT)

    async def put_rate_limit(self, tenant: str, key_id: str | None, limit: RateLimit | None) -> None:
        key = TENANT_DEFAULT if key_id is None else key_id
        if limit is None:
            await self.core.execute("DELETE FROM rate_limits WHERE tenant = $1 AND key_id = $2", tenant, key)
            return
        await self.core.execute(
            "INSERT INTO rate_limits (tenant, key_id, per_second, burst) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant, key_id) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst",
            tenant,
            key,
            limit.per_second,
            limit.burst,
        )


class PgBuckets:
    def __init__(self, core: PgCore) -> None:
        self.core = core

    async def take(self, bucket: str, cost: int, limit: RateLimit) -> Taken:
        row = await self.core.fetchrow(TAKE, bucket, float(limit.burst), float(cost), limit.per_second)
        assert row is not None
        return Taken(row["granted"], row["tokens"])
