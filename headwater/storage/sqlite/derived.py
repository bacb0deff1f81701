"""Derived state on SQLite: a file per partition (`partition.py`) and one they share
(`shared.py`), in the data dir beside the log.

A consumer's batch goes to its partition's file, as do the reads it plans with; what the API
asks of one subject (a profile, a participant, a fact's effects) is read from that subject's
partition; lists that span subjects are read from every partition and merged, newest first.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from headwater.clock import to_us
from headwater.events import Mode
from headwater.partitions import partition_of
from headwater.storage.derived import Rebuild, StateReads
from headwater.storage.effects import EffectBatch, NewDelivery
from headwater.storage.records import (
    PARTITION_LEASE,
    WHOLE_LOG,
    ActionQuery,
    ActionRecord,
    AttemptOutcome,
    BoardKind,
    BoardRow,
    CatalogEntry,
    ClaimedDelivery,
    Completion,
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryQuery,
    Enrollment,
    ParticipantState,
    PointsPeriod,
    Position,
    ProgressRow,
    SubjectProfile,
)
from headwater.storage.sqlite.derived_schema import write_deliveries
from headwater.storage.sqlite.forget import DerivedErasure
from headwater.storage.sqlite.partition import PartitionFile
from headwater.storage.sqlite.shared import SharedFile

T = TypeVar("T")
SHARED_FILE = "derived.db"
READER_THREADS = 4
# How often a waiter looks at a checkpoint: soon at first (a worker applies a small batch in
# a few milliseconds), then every 10 ms.
WAIT_STEPS = (0.001, 0.002, 0.003, 0.005, 0.008)
WAIT_STEADY = 0.01


def partition_file(data_dir: Path, partition: int) -> Path:
    return data_dir / f"derived-{partition}.db"


def _newest_first(lists: Iterable[list[tuple[Position, T]]], limit: int) -> list[tuple[Position, T]]:
    merged = heapq.merge(*lists, key=lambda row: row[0], reverse=True)
    return [row for _, row in zip(range(limit), merged, strict=False)]


def _board(lists: Iterable[list[BoardRow]], limit: int) -> list[BoardRow]:
    """Most first; ties: who reached it first, then participant id (as each file orders)."""
    merged = heapq.merge(*lists, key=lambda r: (-r.value, r.reached_at, r.participant_id))
    return [row for _, row in zip(range(limit), merged, strict=False)]


class SqliteDerived(DerivedErasure):
    def __init__(self, data_dir: Path, queue_max_events: int = 200_000) -> None:
        self.data_dir = data_dir
        self.queue_max_events = queue_max_events
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="headwater-read-derived")
        self.shared = SharedFile(data_dir / SHARED_FILE, queue_max_events=queue_max_events, readers=self._readers)
        self.parts: list[PartitionFile] = []

    async def start(self, partitions: int) -> None:
        await self.shared.start()
        self.parts = [
            PartitionFile(
                partition_file(self.data_dir, p),
                partition=p,
                queue_max_events=self.queue_max_events,
                readers=self._readers,
            )
            for p in range(partitions)
        ]
        await asyncio.gather(*(part.start() for part in self.parts))

    async def close(self) -> None:
        await asyncio.gather(*(part.close() for part in self.parts))
        await self.shared.close()
        self._readers.shutdown(wait=True)

    def _of(self, tenant: str, mode: Mode | str, subject: str | None) -> PartitionFile:
        return self.parts[partition_of(tenant, mode, subject, len(self.parts))]

    async def _each(self, fn: Callable[[PartitionFile], Any]) -> list[Any]:
        return list(await asyncio.gather(*(fn(part) for part in self.parts)))

    async def _first(self, fn: Callable[[PartitionFile], Any]) -> Any:
        """The first partition's answer that is not None (an id that lives in one of them)."""
        return next((found for found in await self._each(fn) if found is not None), None)

    # A consumer's own partition

    def partition(self, partition: int) -> StateReads:
        return self.parts[partition]

    async def apply(self, batch: EffectBatch) -> bool:
        target = self.shared if batch.partition == WHOLE_LOG else self.parts[batch.partition]
        return await target.apply(batch)

    async def enqueue(self, deliveries: Sequence[NewDelivery]) -> None:
        """Messages outside any batch (an endpoint's test message) go to the endpoint's partition."""
        by_part: dict[int, list[NewDelivery]] = {}
        for d in deliveries:
            by_part.setdefault(self._of(d.tenant, d.mode, d.endpoint_id).partition, []).append(d)
        for p, rows in by_part.items():
            await self.parts[p].write(lambda tx, rows=rows: write_deliveries(tx.conn, rows))  # type: ignore[misc]

    # Positions and leases

    async def checkpoint(self, consumer: str, partition: int) -> int:
        target = self.shared if partition == WHOLE_LOG else self.parts[partition]
        return (await target.checkpoints()).get((consumer, partition), 0)

    async def checkpoints(self) -> dict[tuple[str, int], int]:
        found = await self.shared.checkpoints()
        for part in await self._each(lambda part: part.checkpoints()):
            found.update(part)
        return found

    def _lease_file(self, name: str) -> PartitionFile | SharedFile:
        return self.parts[int(name.removeprefix(PARTITION_LEASE))] if name.startswith(PARTITION_LEASE) else self.shared

    async def _lease_rows(self) -> dict[str, tuple[str, int]]:
        rows = await self.shared.lease_owners()
        for part in await self._each(lambda part: part.lease_owners()):
            rows.update(part)
        return rows

    async def leases(self, now: datetime) -> dict[str, str]:
        at = to_us(now)
        return {name: owner for name, (owner, expires) in (await self._lease_rows()).items() if expires > at}

    async def heartbeat(self, owner: str, now: datetime, until: datetime) -> list[str]:
        return await self.shared.heartbeat(owner, now, until)

    async def take_leases(self, owner: str, names: Sequence[str], now: datetime, until: datetime) -> list[str]:
        # Only files whose lease is free, expired or the owner's are written: a write to a file
        # another worker holds would drop that worker's page cache for nothing.
        at = to_us(now)
        rows = await self._lease_rows()
        wanted = [n for n in names if n not in rows or rows[n][0] == owner or rows[n][1] <= at]
        by_file: dict[Any, list[str]] = {}
        for name in wanted:
            by_file.setdefault(self._lease_file(name), []).append(name)
        taken = await asyncio.gather(*(f.take_leases(owner, ns, now, until) for f, ns in by_file.items()))
        return sorted(name for names_taken in taken for name in names_taken)

    async def release_leases(self, owner: str, names: Sequence[str]) -> None:
        by_file: dict[Any, list[str]] = {}
        for name in names:
            by_file.setdefault(self._lease_file(name), []).append(name)
        await asyncio.gather(*(f.release_leases(owner, ns) for f, ns in by_file.items()))

    async def leave(self, owner: str) -> None:
        held = [name for name, (holder, _) in (await self._lease_rows()).items() if holder == owner]
        await self.release_leases(owner, held)
        await self.shared.leave(owner)

    async def wait_checkpoint(self, consumers: Sequence[str], partition: int, seq: int, timeout: float) -> bool:
        """Polls the partition's checkpoints: SQLite has no notification across processes, and
        a look is one small read on a reader connection."""
        target = self.parts[partition]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = 0
        while not await target.checkpoint_reached(consumers, seq):
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(WAIT_STEPS[step] if step < len(WAIT_STEPS) else WAIT_STEADY, left))
            step += 1
        return True

    # Dead letters

    async def list_dead_letters(
        self, tenant: str, mode: Mode, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeadLetter]]:
        return _newest_first(await self._each(lambda p: p.list_dead_letters(tenant, mode, before, limit)), limit)

    async def get_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str) -> DeadLetter | None:
        found: DeadLetter | None = await self._first(lambda p: p.get_dead_letter(tenant, mode, dead_letter_id))
        return found

    async def retry_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str, at: datetime) -> DeadLetter | None:
        found = await self.get_dead_letter(tenant, mode, dead_letter_id)
        if found is None:
            return None
        return await self.parts[found.partition].retry_dead_letter(tenant, mode, dead_letter_id, at)

    async def retrying(self, partitions: Sequence[int]) -> list[DeadLetter]:
        found = await asyncio.gather(*(self.parts[p].retrying() for p in partitions))
        return [d for part in found for d in part]

    # Triggers

    async def list_actions(self, query: ActionQuery) -> list[tuple[Position, ActionRecord]]:
        return _newest_first(await self._each(lambda p: p.list_actions(query)), query.limit)

    async def list_enrollments(self, tenant: str, mode: Mode, journey_id: str) -> list[Enrollment]:
        found = await self._each(lambda p: p.list_enrollments(tenant, mode, journey_id))
        return list(heapq.merge(*found, key=lambda e: e.enrolled_at))

    async def get_profile(self, tenant: str, mode: Mode, subject: str) -> SubjectProfile | None:
        return await self._of(tenant, mode, subject).get_profile(tenant, mode, subject)

    # The webhook outbox

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None:
        found: Delivery | None = await self._first(lambda p: p.get_delivery(tenant, mode, delivery_id))
        return found

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[Position, Delivery]]:
        return _newest_first(await self._each(lambda p: p.list_deliveries(query)), query.limit)

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        found: Delivery | None = await self._first(lambda p: p.retry_delivery(tenant, mode, delivery_id, at))
        return found

    async def list_webhook_attempts(
        self, endpoint_id: str, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeliveryAttempt]]:
        return _newest_first(await self._each(lambda p: p.list_webhook_attempts(endpoint_id, before, limit)), limit)

    async def fail_pending(self, endpoint_id: str, reason: str) -> None:
        await self._each(lambda p: p.fail_pending(endpoint_id, reason))

    async def forget_endpoint(self, endpoint_id: str) -> None:
        await self._each(lambda p: p.forget_endpoint(endpoint_id))

    async def claim_deliveries(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        first_delay: float = 0.0,
        partitions: Sequence[int] | None = None,
    ) -> list[ClaimedDelivery]:
        claimed: list[ClaimedDelivery] = []
        for p in range(len(self.parts)) if partitions is None else partitions:
            if len(claimed) >= limit:
                break
            claimed += await self.parts[p].claim_deliveries(now, limit - len(claimed), lease_until, first_delay)
        return claimed

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        await self.parts[outcome.partition].finish_attempt(outcome)

    # Facts and gamification

    async def fact_effects(self, tenant: str, mode: Mode, participant: str | None, fact_id: str) -> bytes | None:
        return await self._of(tenant, mode, participant).fact_effects(fact_id)

    async def participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantState:
        return await self._of(tenant, mode, participant).participant(tenant, mode, participant)

    async def progress_rows(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> list[ProgressRow]:
        return await self._of(tenant, mode, participant).progress_rows(challenge_id, participant, low, high)

    async def distinct_total(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> int:
        return await self._of(tenant, mode, participant).distinct_total(challenge_id, participant, low, high)

    async def list_completions(self, tenant: str, mode: Mode, challenge_id: str, participant: str) -> list[Completion]:
        return await self._of(tenant, mode, participant).list_completions(challenge_id, participant)

    async def points_board(
        self, tenant: str, mode: Mode, period: PointsPeriod, bucket: int, limit: int
    ) -> list[BoardRow]:
        return _board(await self._each(lambda p: p.points_board(tenant, mode, period, bucket, limit)), limit)

    async def challenge_board(
        self, challenge_id: str, kind: BoardKind, low: int, high: int, limit: int
    ) -> list[BoardRow]:
        return _board(await self._each(lambda p: p.challenge_board(challenge_id, kind, low, high, limit)), limit)

    # The catalog

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]:
        return await self.shared.list_catalog(tenant, mode)

    async def catalog_types(self, scopes: Sequence[tuple[str, Mode]]) -> set[tuple[str, Mode, str]]:
        return await self.shared.catalog_types(scopes)

    # Replay

    async def rebuild(self) -> Rebuild:
        from headwater.storage.sqlite.rebuild import SqliteRebuild

        return await SqliteRebuild.open(self)
