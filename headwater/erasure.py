"""Erasure: deleting a tenant's events (of a subject, or of a time range) and everything derived
from them, in bounded passes, while ingest and the consumers go on.

Order. The log goes first, then the derived rows: an event is the source of truth, and once it
is gone from the log no consumer that reads the log afterwards can derive anything from it, and
no replay can bring it back. One pass deletes at most `batch_rows` events (one transaction of the
log), then the rows hanging off exactly those events in their partition (one transaction of the
derived state), then pauses `pause` seconds, so that neither ingest's commits nor a consumer's
batches wait long behind it. Quarantined items follow, then (for a subject) what derived state
keys by the subject: its profile, progress, badges, points and the rest.

The race with a consumer. A consumer that read an event just before the log lost it still holds
it in a batch it has not written yet, and that batch would put back derived rows (and may append
award events) of an erased event after the derived deletes ran. Such a batch moves the consumer's
checkpoint past the event in the same transaction as its effects. So when a partition's
consumers had not all passed the newest offset erased there, the erasure waits (at most
`settle_seconds`) until they have, then makes every pass again: whatever a batch in flight wrote
back (or appended) is then deleted too. A consumer that still has not passed the offset by then
never read the event (it only reads the log as it is now), unless one of its batches took longer
than `settle_seconds`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from headwater.events import Mode
from headwater.processing.catalog import NAME as CATALOG
from headwater.processing.consumer import ENGINES
from headwater.storage.base import Store
from headwater.storage.log import ErasureQuery
from headwater.storage.records import ErasedEvent, ErasureCounts

BATCH_ROWS = 500
SETTLE_SECONDS = 5.0
# Retention runs beside ingest all day: smaller steps, with a rest between them.
RETENTION_BATCH_ROWS = 500
RETENTION_PAUSE_SECONDS = 0.05


class Eraser:
    def __init__(
        self, store: Store, *, batch_rows: int = BATCH_ROWS, pause: float = 0.0, settle_seconds: float = SETTLE_SECONDS
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.pause = pause
        self.settle_seconds = settle_seconds

    async def erase(
        self,
        tenant: str,
        mode: Mode,
        *,
        subject: str | None = None,
        time_from: datetime | None = None,
        time_to: datetime | None = None,
    ) -> ErasureCounts:
        """Erase the events of `subject` (any when None) with an event time in [from, to), the
        quarantined items of the subject received then, and for a subject, all derived state of it."""
        query = ErasureQuery(tenant, mode, subject, time_from, time_to, self.batch_rows)
        counts = ErasureCounts()
        reached = await self._passes(query, counts)
        if await self._settle(reached):
            await self._passes(query, counts)
        return counts

    async def _passes(self, query: ErasureQuery, counts: ErasureCounts) -> dict[int, int]:
        """Every pass until nothing is left; per partition, the newest offset erased."""
        registry = self.store.registry
        triggers = [t.id for t in await registry.list_triggers(query.tenant, query.mode)]
        reached: dict[int, int] = {}
        while erased := await self.store.log.erase_events(query):
            counts.events += len(erased)
            counts.facts += len(erased)
            by_partition: dict[int, list[ErasedEvent]] = {}
            for event in erased:
                by_partition.setdefault(event.partition, []).append(event)
                reached[event.partition] = max(reached.get(event.partition, 0), event.seq)
            derived = self.store.derived
            for partition, events in sorted(by_partition.items()):
                counts.add(await derived.forget_events(partition, query.tenant, query.mode, events, triggers))
            await derived.uncount(CATALOG, query.tenant, query.mode, erased)
            await self._rest()
        while found := await self.store.log.erase_quarantine(query):
            counts.quarantined += found
            await self._rest()
        if query.subject is not None:
            challenges = [c.id for c in await registry.list_challenges(query.tenant, query.mode)]
            counts.add(
                await self.store.derived.forget_subject(query.tenant, query.mode, query.subject, challenges, triggers)
            )
        return reached

    async def _rest(self) -> None:
        if self.pause:
            await asyncio.sleep(self.pause)

    async def _settle(self, reached: dict[int, int]) -> bool:
        """Wait for the consumers of every partition that had not passed what was erased there;
        True when there were any (the passes must then run again)."""
        names: Sequence[str] = [engine.name for engine in ENGINES]
        behind: dict[int, int] = {}
        for partition, seq in reached.items():
            if any([await self.store.derived.checkpoint(name, partition) < seq for name in names]):
                behind[partition] = seq
        await asyncio.gather(
            *(self.store.derived.wait_checkpoint(names, p, seq, self.settle_seconds) for p, seq in behind.items())
        )
        return bool(behind)


async def apply_retention(store: Store, eraser: Eraser, now: datetime) -> dict[tuple[str, Mode], ErasureCounts]:
    """Erase, for every tenant and mode with a retention policy, the events whose event time is
    older than its days before `now`, and the quarantined items received before then."""
    done: dict[tuple[str, Mode], ErasureCounts] = {}
    for tenant, mode, days in await store.registry.retention_policies():
        done[tenant, mode] = await eraser.erase(tenant, mode, time_to=now - timedelta(days=days))
    return done
