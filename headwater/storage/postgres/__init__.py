"""The server store: one PostgreSQL database holds the log, the registry and every derived
table, shared by any number of API processes and workers on any machines.

- `core`: the pool, the schema's version, failures as `StoreError`.
- `log`: the event log and the quarantine; how offsets stay in commit order.
- `registry`: tenants, keys, schemas, definitions.
- `derived`, `state`, `rebuild`: what the consumers derive, their checkpoints, leases and dead
  letters, the outbox, and replay.
"""

from __future__ import annotations

from headwater.storage.base import Store
from headwater.storage.postgres.core import PgCore
from headwater.storage.postgres.derived import PgDerived
from headwater.storage.postgres.limits import PgBuckets
from headwater.storage.postgres.log import PgLog
from headwater.storage.postgres.registry import PgRegistry


class PgLifecycle:
    def __init__(self, core: PgCore, log: PgLog) -> None:
        self.core = core
        self.log = log

    async def start(self) -> None:
        await self.core.start()
        await self.log.start()

    async def close(self) -> None:
        await self.log.close()
        await self.core.close()

    async def ping(self) -> None:
        await self.core.ping()


def open_postgres_store(
    url: str, *, pool_size: int = 10, queue_max_events: int = 200_000, partitions: int | None = None
) -> Store:
    core = PgCore(url, pool_size=pool_size, partitions=partitions)
    log = PgLog(core, queue_max_events=queue_max_events)
    return Store(
        log=log,
        registry=PgRegistry(core),
        derived=PgDerived(core),
        lifecycle=PgLifecycle(core, log),
        buckets=PgBuckets(core),
    )


__all__ = ["PgCore", "open_postgres_store"]
