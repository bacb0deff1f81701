"""The worker: a process that runs the consumers, sharing the partitions with other workers.

Each worker says every half second that it is alive, holds leases on partitions and renews
them every third of the lease time. Every worker takes its share (the partitions divided by
the workers alive, rounded up) of the free ones, and hands back what it holds beyond its
share as soon as it sees another worker, so that a worker that joins gets partitions within
a second or so, and a worker that dies (its leases expire) leaves its partitions to the
others. For each partition it holds, it runs the facts consumer, then the trigger consumer,
in a loop that waits for the log to grow when both have caught up. One worker at a time
also holds the catalog's lease and runs the catalog consumer, and every worker sends due
webhook deliveries (claimed one by one, so workers share the outbox).

A lease only saves work: correctness is the checkpoint's compare-and-set in the same
transaction as a batch's effects, plus the check that the writer still holds the lease.

With a bus (`headwater.bus`), a partition's runner waits on the partition's stream instead of
the log's head, acknowledges entries as its checkpoint passes them, and after a batch commits
sends a notice that wakes the API's waiters; the worker runs the bus's catch-up publisher for
the partitions it holds. The runner still reads the store after its checkpoint, so the stream
decides only when it looks; while the bus is down it waits on the log's head as without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import socket
import time
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from headwater.bus import Bus, BusError, open_bus
from headwater.clock import Clock, system_now
from headwater.config import Settings
from headwater.erasure import RETENTION_BATCH_ROWS, RETENTION_PAUSE_SECONDS, Eraser, apply_retention
from headwater.processing.catalog import CatalogConsumer
from headwater.processing.consumer import ENGINES, Engine, PartitionConsumer
from headwater.processing.definitions import Definitions
from headwater.processing.webhooks import DeliveryWorker
from headwater.storage import open_store
from headwater.storage.base import Store, StoreError
from headwater.storage.records import CATALOG_LEASE, RETENTION_LEASE, partition_lease

logger = logging.getLogger("headwater.worker")
TICK_SECONDS = 0.5
RETRY_INTERVAL = 0.25  # seconds between looks for dead letters to apply again
HEAD_TIMEOUT = 0.5
# With a bus the partitions' runners wait on their streams, and the log's head only wakes the
# catalog (at most every CATALOG_SPACING_SECONDS) and the runners while the bus is down: a look
# at it this often is enough, where following every move cost a worker a sixth of its time and
# the store two queries per look.
HEAD_SPACING_WITH_BUS = 0.1
# A partition whose last look found nothing to plan looks again when the log grows, but no
# sooner than this after that look: under steady ingest the head moves every few milliseconds,
# and every look costs each consumer a read and a checkpoint write, for nothing when no rule
# applies. A partition that had events to plan looks again at once (a `/sync` waits for it).
IDLE_LOOK_SECONDS = 0.02
# The catalog folds at most this often (sooner only while it is behind by a full page): its
# cost per fold is a read, a write and the counts of the types it saw.
CATALOG_SPACING_SECONDS = 0.2
BACKOFF_SECONDS = 0.5
CATCH_UP_SECONDS = 0.5  # how often the bus's catch-up publisher looks at each partition held
RETENTION_INTERVAL_SECONDS = 60.0  # how often the worker holding the retention lease applies the policies
_instances = itertools.count(1)


def default_owner() -> str:
    """`host:pid`, with a number for a second worker in the same process (tests)."""
    n = next(_instances)
    return f"{socket.gethostname()}:{os.getpid()}" + ("" if n == 1 else f":{n}")


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        owner: str | None = None,
        clock: Clock = system_now,
        engines: Sequence[Engine] = ENGINES,
        deliveries: bool | None = None,
        catalog: bool = True,
        retention_interval: float = RETENTION_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self._own_store = store is None
        self.store = store or open_store(settings)
        self.bus: Bus | None = open_bus(settings)
        self.owner = owner or default_owner()
        self.clock = clock
        self.engines = tuple(engines)
        self.lease_seconds = settings.lease_seconds
        self.deliveries = settings.webhook_worker if deliveries is None else deliveries
        self.catalog = catalog
        self.definitions = Definitions(self.store.registry)
        self.head = 0
        self._grown = asyncio.Event()  # set, and replaced, each time the head moves
        # Each partition's head, and an event set (and replaced) when it moves: a partition's
        # runner wakes for its own events only.
        self.heads: dict[int, int] = {}
        self._partition_grown: dict[int, asyncio.Event] = {}
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._catalog: asyncio.Task[None] | None = None
        self.retention_interval = retention_interval
        self._retention: asyncio.Task[None] | None = None
        self._alive = 0  # workers alive at the last look
        self._renewed_at = -math.inf
        # How often a worker says it is alive: often enough that a worker that joins gets its
        # share within a second; leases are renewed every third of their time.
        self.tick_seconds = min(TICK_SECONDS, self.lease_seconds / 3)
        self.started = asyncio.Event()  # set once the first leases are taken

    @property
    def partitions(self) -> list[int]:
        """The partitions this worker runs now."""
        return sorted(self._runners)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (or the task is cancelled); then hand every lease back."""
        if self._own_store:
            await self.store.start()
        if self.bus is not None:
            await self.bus.start()
        delivery = (
            DeliveryWorker(self.store, self.settings, self.clock, partitions=lambda: self.partitions)
            if self.deliveries
            else None
        )
        background = [asyncio.create_task(self._watch_head(), name="headwater-head")]
        if self.bus is not None:
            background.append(asyncio.create_task(self._catch_up(self.bus), name="headwater-catch-up"))
        try:
            if delivery is not None:
                delivery.start()
            await self._balance()
            self.started.set()
            stop = stop or asyncio.Event()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_seconds):
                        await stop.wait()
                if not stop.is_set():
                    await self._tick()
        finally:
            await self._stop_all()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if delivery is not None:
                await delivery.stop()
            with contextlib.suppress(StoreError):
                await self.store.derived.leave(self.owner)
            if self.bus is not None:
                await self.bus.close()
            if self._own_store:
                await self.store.close()

    # Leases

    async def _tick(self) -> None:
        """Say this worker is alive; look at the leases when the workers alive changed, when
        this one holds less than its share, or when its leases are due for renewal."""
        try:
            now = self.clock()
            alive = await self.store.derived.heartbeat(self.owner, now, now + timedelta(seconds=self.lease_seconds))
        except StoreError as exc:
            logger.warning("worker %s could not say it is alive (%s); retrying", self.owner, exc)
            return
        due = time.monotonic() - self._renewed_at >= self.lease_seconds / 3
        if due or len(alive) != self._alive or len(self._runners) < self._share(len(alive)):
            await self._balance(alive)

    def _share(self, alive: int) -> int:
        return math.ceil(self.store.log.partitions / max(1, alive))

    async def _balance(self, alive: list[str] | None = None) -> None:
        """Renew what this worker holds, take its share of what is free, hand back the rest."""
        try:
            now = self.clock()
            until = now + timedelta(seconds=self.lease_seconds)
            if alive is None:
                alive = await self.store.derived.heartbeat(self.owner, now, until)
            self._alive = len(alive)
            count = self.store.log.partitions
            share = self._share(len(alive))
            held = set(self._runners)
            # Each worker looks at the partitions in its own order, so that workers starting
            # together mostly ask for different ones.
            offset = zlib.crc32(self.owner.encode()) % count
            order = sorted(range(count), key=lambda p: (p - offset) % count)
            wanted = [p for p in order if p in held] + (
                [p for p in order if p not in held] if len(held) < share else []
            )
            taken = await self.store.derived.take_leases(self.owner, [partition_lease(p) for p in wanted], now, until)
            self._renewed_at = time.monotonic()
            got = [p for p in wanted if partition_lease(p) in set(taken)]
            keep, extra = got[:share], got[share:]
            await self._stop(sorted(set(held) - set(keep)), extra)
            for p in keep:
                if p not in self._runners:
                    self._runners[p] = asyncio.create_task(self._run_partition(p), name=f"headwater-partition-{p}")
            catalog = self.catalog and await self.store.derived.take_leases(self.owner, [CATALOG_LEASE], now, until)
            if catalog and self._catalog is None:
                self._catalog = asyncio.create_task(self._run_catalog(), name="headwater-catalog")
            elif not catalog and self._catalog is not None:
                self._catalog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._catalog
                self._catalog = None
            await self._balance_retention(now, until)
        except StoreError as exc:
            logger.warning("worker %s could not renew its leases (%s); retrying", self.owner, exc)

    async def _stop(self, running: list[int], extra: Sequence[int] = ()) -> None:
        """Stop the runners of `running` (at once: a runner stops at its next await, and its
        half-done batch is simply not written) and hand back their leases and `extra`'s."""
        tasks = [self._runners.pop(p) for p in running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if running or extra:
            with contextlib.suppress(StoreError):
                await self.store.derived.release_leases(self.owner, [partition_lease(p) for p in [*running, *extra]])

    async def _balance_retention(self, now: datetime, until: datetime) -> None:
        """Run the retention loop while this worker holds its lease (one worker of the cluster)."""
        held = await self.store.derived.take_leases(self.owner, [RETENTION_LEASE], now, until)
        if held and self._retention is None:
            self._retention = asyncio.create_task(self._run_retention(), name="headwater-retention")
        elif not held and self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None

    async def _stop_all(self) -> None:
        retention = [self._retention] if self._retention else []
        self._retention = None
        tasks = [*self._runners.values(), *([self._catalog] if self._catalog else []), *retention]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        self._catalog = None

    # The log's head

    async def _watch_head(self) -> None:
        while True:
            try:
                head = await self.store.log.wait_appended(self.head, HEAD_TIMEOUT)
            except StoreError:
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            if head != self.head:
                with contextlib.suppress(StoreError):
                    heads = await self.store.log.partition_heads()
                    for p, at in heads.items():
                        if at != self.heads.get(p) and p in self._partition_grown:
                            self._partition_grown.pop(p).set()
                    self.heads = heads
                self.head = head
                grown, self._grown = self._grown, asyncio.Event()
                grown.set()
                if self.bus is not None:
                    await asyncio.sleep(HEAD_SPACING_WITH_BUS)

    async def _wait_for_growth(self, seen: int, timeout: float, partition: int | None = None) -> None:
        """Until the head (of `partition`, when given) is past `seen`, or `timeout`."""
        # An event per head rather than a Condition: a wait cancelled while the head moves
        # (a worker stopping) must end at once, and an Event's wait holds no lock.
        if partition is None:
            if self.head > seen:
                return
            grown = self._grown
        else:
            if self.heads.get(partition, 0) > seen:
                return
            grown = self._partition_grown.setdefault(partition, asyncio.Event())
        # asyncio.timeout, not wait_for: wait_for runs the wait as a task of its own, and on 3.11
        # a cancel that meets its timeout can be lost, leaving a stopping worker stuck here.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await grown.wait()

    # Consumers

    async def _run_partition(self, partition: int) -> None:
        lease = partition_lease(partition)
        consumers = [
            PartitionConsumer(
                self.store,
                self.definitions,
                engine,
                partition,
                owner=self.owner,
                lease=lease,
                clock=self.clock,
                bus=self.bus,
            )
            for engine in self.engines
        ]
        reader = self.bus.reader(partition, self.owner) if self.bus is not None else None
        retry_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            seen, looked = self.heads.get(partition, 0), loop.time()
            behind = False
            try:
                before = min(c.checkpoint for c in consumers)
                for consumer in consumers:
                    behind |= await consumer.run_once() >= consumer.batch_size
                if self.bus is not None and min(c.checkpoint for c in consumers) != before:
                    await self._notify(self.bus, partition)
                if loop.time() >= retry_at:
                    retry_at = loop.time() + RETRY_INTERVAL
                    await self._retry_dead_letters(partition, consumers)
            except StoreError as exc:
                logger.warning("partition %d: the store is unavailable (%s); retrying", partition, exc)
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            except Exception:  # the loop must outlive anything a batch can raise
                logger.exception("partition %d: processing failed; retrying", partition)
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            if not behind:
                if not any(c.planned for c in consumers):
                    await asyncio.sleep(max(0.0, looked + IDLE_LOOK_SECONDS - loop.time()))
                try:
                    if reader is None:
                        await self._wait_for_growth(seen, RETRY_INTERVAL, partition)
                    else:
                        await reader.wait(min(c.checkpoint for c in consumers), RETRY_INTERVAL)
                except BusError:
                    await self._wait_for_growth(seen, RETRY_INTERVAL, partition)

    async def _notify(self, bus: Bus, partition: int) -> None:
        """Tell waiters a checkpoint moved; without the bus they find it by polling."""
        with contextlib.suppress(BusError):
            await bus.notify(partition)

    async def _catch_up(self, bus: Bus) -> None:
        """The bus's catch-up publisher for every partition this worker holds (one worker holds
        a partition at a time, but a hand-over overlapping is harmless: see headwater.bus.redis)."""
        while True:
            behind = False
            for partition in self.partitions:
                names = [engine.name for engine in self.engines]

                async def floor(p: int = partition, names: list[str] = names) -> int:
                    return min([await self.store.derived.checkpoint(name, p) for name in names])

                try:
                    behind |= await bus.catch_up(self.store.log, partition, floor)
                except (BusError, StoreError) as exc:
                    logger.warning("partition %d: the bus's catch-up failed; retrying: %s", partition, exc)
                    break
                except Exception:  # a bug here must not end the catch-up of every partition for good
                    logger.exception("partition %d: the bus's catch-up failed; retrying", partition)
                    break
            if not behind:
                await asyncio.sleep(CATCH_UP_SECONDS)

    async def _retry_dead_letters(self, partition: int, consumers: list[PartitionConsumer]) -> None:
        by_name = {c.name: c for c in consumers}
        for dead in await self.store.derived.retrying([partition]):
            consumer = by_name.get(dead.consumer)
            if consumer is not None:
                await consumer.retry(dead)

    async def _run_catalog(self) -> None:
        consumer = CatalogConsumer(self.store, self.owner, CATALOG_LEASE)
        loop = asyncio.get_running_loop()
        while True:
            seen, looked = self.head, loop.time()
            try:
                if await consumer.run_once() >= consumer.batch_size:
                    continue
            except StoreError as exc:
                logger.warning("catalog: the store is unavailable (%s); retrying", exc)
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            except Exception:  # the loop must outlive anything a page can raise
                logger.exception("catalog: folding failed; retrying")
                await asyncio.sleep(BACKOFF_SECONDS)
                continue
            await asyncio.sleep(max(0.0, looked + CATALOG_SPACING_SECONDS - loop.time()))
            await self._wait_for_growth(seen, self.settings.catalog_interval)

    async def _run_retention(self) -> None:
        eraser = Eraser(self.store, batch_rows=RETENTION_BATCH_ROWS, pause=RETENTION_PAUSE_SECONDS)
        while True:
            try:
                for (tenant, mode), counts in (await apply_retention(self.store, eraser, self.clock())).items():
                    if counts.events or counts.quarantined:
                        logger.info(
                            "retention: %s/%s: %d events, %d quarantined items deleted",
                            tenant, mode, counts.events, counts.quarantined,
                        )  # fmt: skip
            except StoreError as exc:
                logger.warning("retention: the store is unavailable (%s); retrying", exc)
            except Exception:  # the loop must outlive anything a pass can raise
                logger.exception("retention: a pass failed; retrying")
            await asyncio.sleep(self.retention_interval)
