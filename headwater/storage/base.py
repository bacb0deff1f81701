"""The storage contract: three protocols, and the one object that bundles them.

- `log` (`storage.log.EventLog`): the append-only event log, split into partitions, and
  the quarantine written with it. The source of truth.
- `registry` (`storage.registry.Registry`): tenants, keys, schemas and definitions.
- `derived` (`storage.derived.DerivedState`): everything derived from the log, how
  workers share it (checkpoints, leases, dead letters), and waiting across processes.

A backend implements the three and `open_store` picks it. Nothing above `storage/` knows
which backend it talks to, and nothing below it knows a domain rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from headwater.storage.buckets import Buckets
from headwater.storage.derived import DerivedState
from headwater.storage.log import EventLog
from headwater.storage.registry import Registry


class StoreError(Exception):
    """The store could not complete a write; nothing of that write is acknowledged."""


class IncompatibleStore(StoreError):
    """The stored data is not what this configuration can open (say, another partition count
    than the one the data dir was created with): nothing was changed."""


class StorageFull(StoreError):
    """The store's disk (or its size limit) is full: the write was rolled back whole, and the
    store takes writes again, in the same process, once there is room."""


class Backpressure(StoreError):
    """The write queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("write queue is full")
        self.retry_after = retry_after


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreError` unless the store accepts writes now."""


@dataclass(frozen=True)
class Store:
    log: EventLog
    registry: Registry
    derived: DerivedState
    lifecycle: Lifecycle
    # Rate-limit buckets all API processes share; None when one process serves the store.
    buckets: Buckets | None = None

    async def start(self) -> None:
        await self.lifecycle.start()

    async def close(self) -> None:
        await self.lifecycle.close()

    async def ping(self) -> None:
        await self.lifecycle.ping()
