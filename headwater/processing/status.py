"""Where processing stands: the log's head and, per consumer and partition, its checkpoint,
its lag (events of the partition after the checkpoint) and the worker that holds it."""

from __future__ import annotations

import msgspec

from headwater.clock import system_now
from headwater.processing.catalog import NAME as CATALOG
from headwater.processing.consumer import ENGINES
from headwater.storage.base import Store
from headwater.storage.records import CATALOG_LEASE, WHOLE_LOG, partition_lease


class ConsumerStatus(msgspec.Struct):
    name: str
    partition: int | None  # None: the catalog, which follows the whole log
    checkpoint: int
    lag: int
    owner: str | None


class Status(msgspec.Struct):
    head: int
    consumers: list[ConsumerStatus]
    workers: list[str]


async def status(store: Store) -> Status:
    now = system_now()
    head = await store.log.head()
    checkpoints = await store.derived.checkpoints()
    leases = await store.derived.leases(now)
    consumers = []
    for engine in ENGINES:
        for p in range(store.log.partitions):
            at = checkpoints.get((engine.name, p), 0)
            lag = await store.log.count_after(p, at)
            consumers.append(ConsumerStatus(engine.name, p, at, lag, leases.get(partition_lease(p))))
    at = checkpoints.get((CATALOG, WHOLE_LOG), 0)
    consumers.append(ConsumerStatus(CATALOG, None, at, max(0, head - at), leases.get(CATALOG_LEASE)))
    return Status(head, consumers, sorted(set(leases.values())))
