"""The bus: what carries events from the API to the workers and wakes waiters, beside the store.

The store stays the source of truth. A worker's order and its exactly-once come from its
checkpoint in the store, as without a bus (it reads its partition after the checkpoint); the
bus only tells it when to look, and tells a waiter (`?wait=processed`, document 002's inline
results, document 003's `/sync`) when to look at the checkpoints again. So an entry the bus
loses, delays or carries twice costs latency, never an event or a second application.

`None` is the no-bus case (`bus` unset): workers and waiters look at the store, and the
dialects' stream ids are what they were before (the event's id; `<ms>-<offset>`).
`headwater.bus.redis` is the one bus there is: Redis Streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol

from headwater.config import Settings
from headwater.storage.buckets import Buckets
from headwater.storage.log import AppendOutcome, EventLog

# A waiter woken by the bus looks at the store at least this often anyway: what a lost notice costs.
NOTICE_FALLBACK_SECONDS = 1.0


class BusError(Exception):
    """The bus did not answer (in time): nothing that needs it is lost, only later."""


class Published(NamedTuple):
    """An accepted event to carry: its partition, log offset and id."""

    partition: int
    seq: int
    event_id: str


def carried(outcomes: Sequence[AppendOutcome]) -> list[tuple[int, Published]]:
    """The events an append accepted, by their index among `outcomes`: what to publish."""
    return [
        (index, Published(o.partition, o.seq, o.id))
        for index, o in enumerate(outcomes)
        if o.status == "accepted" and o.partition is not None and o.seq is not None and o.id is not None
    ]


class StreamReader(Protocol):
    """A worker's reading of one partition's stream."""

    async def wait(self, checkpoint: int, timeout: float) -> None:
        """Acknowledge every entry at or below `checkpoint` (the consumers' stored checkpoint:
        their effects are committed), then wait until an entry beyond it arrives, or `timeout`.
        Raises `BusError`."""


class Bus(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `BusError` unless the bus answers now."""

    # The API

    async def publish(self, events: Sequence[Published]) -> list[str] | None:
        """Carry the events (just committed), in one round trip: their entry ids, in order, or
        None when the bus did not take them within its time (the catch-up publisher will)."""

    def buckets(self, fallback: Buckets) -> Buckets:
        """Rate-limit buckets every API process shares; `fallback` counts while the bus is down."""

    def woken(self, partition: int) -> asyncio.Event | None:
        """An event set by the next notice that a checkpoint of `partition` moved; None while
        the bus is not listening (the caller then waits through the store)."""

    # The workers

    def reader(self, partition: int, consumer: str) -> StreamReader: ...

    async def notify(self, partition: int) -> None:
        """Say that a checkpoint of `partition` moved (its batch committed). Raises `BusError`."""

    async def catch_up(self, log: EventLog, partition: int, floor: Callable[[], Awaitable[int]]) -> bool:
        """Carry, in log order, the partition's events that have no entry yet, and trim the
        stream to what is acknowledged; True when there is more to do at once. `floor` is the
        offset every consumer has applied (nothing at or below it needs carrying). Raises
        `BusError`."""


def open_bus(settings: Settings, *, listen: bool = False) -> Bus | None:
    """The configured bus, or None. `listen`: receive checkpoint notices (an API process)."""
    if settings.bus is None:
        return None
    from headwater.bus.redis import RedisBus

    return RedisBus(settings.bus, listen=listen)
