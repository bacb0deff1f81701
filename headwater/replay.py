"""`headwater replay`: rebuild every state derived from the log, then swap it in.

Rebuilt: challenge progress and completions, the effects /sync shows, badges, the points
ledger and totals, and the trigger state: rolling windows, actions, journey enrolments and
subject profiles. Not rebuilt: definitions, the event log itself, the catalog, dead letters,
and the webhook outbox, whose delivery ids derive from (endpoint, message) so that nothing
already sent is sent again.

How:
1. The backend makes fresh, empty derived state beside the live one (`DerivedState.rebuild`;
   one rebuild per store at a time).
2. The whole log is applied in order, page by page and, within a page, partition by
   partition, with the engines the workers use (facts first, then triggers): the same code,
   on fresh state. Award events the
   rebuild makes are appended to the log after each page; their idempotency keys make the ones
   already there no-ops, and the rebuild reaches the new ones like any other event. Webhook
   messages the rebuild would enqueue are dropped (see 3).
3. When the rebuild has caught up with the log (a server may be ingesting all along), it
   waits until the live trigger consumer has passed the rebuilt position in every partition,
   so every webhook message up to there is in the outbox. Partitions no worker holds are
   worked through by a worker of this process.
4. The backend swaps the fresh state in, in one transaction, with the facts and trigger
   checkpoints of every partition set to the rebuilt position. Running workers notice the
   moved checkpoint and apply the rest of the log on the new state, re-enqueuing (as no-ops)
   the messages of events they had already seen.

Nothing derived reads the clock (facts are processed "at" their event's receive time,
progress and awards happen at event time, trigger actions are stamped with the receive time
on replay), so rebuilding twice from the same log gives identical tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headwater.config import Settings
from headwater.events import Event
from headwater.partitions import partition_of
from headwater.processing.consumer import ENGINES
from headwater.processing.definitions import Definitions
from headwater.processing.worker import Worker
from headwater.storage.base import Store
from headwater.storage.derived import Rebuild
from headwater.storage.effects import Effects

logger = logging.getLogger("headwater.replay")
Progress = Callable[[int, int], None]
TRIGGERS = "triggers"


@dataclass
class ReplayResult:
    events: int  # events applied
    position: int  # the log offset the rebuilt state covers
    appended: int  # award events the rebuild added to the log
    skipped: int  # events no engine could apply (dead letters of the rebuild)
    rows: dict[str, int]  # rows per rebuilt table


class Replay:
    def __init__(self, store: Store, settings: Settings, batch_size: int = 2000) -> None:
        self.store = store
        self.settings = settings
        self.batch_size = batch_size
        self.definitions = Definitions(store.registry)

    async def run(self, progress: Progress | None = None) -> ReplayResult:
        rebuild = await self.store.derived.rebuild()
        try:
            return await self._run(rebuild, progress)
        finally:
            await rebuild.discard()

    async def _run(self, rebuild: Rebuild, progress: Progress | None) -> ReplayResult:
        position = applied = appended = skipped = 0
        last: dict[int, int] = {}  # per partition, its last offset the rebuild applied
        count = self.store.log.partitions
        while events := await self.store.log.read_log(position, self.batch_size):
            by_partition: dict[int, list[Event]] = {}
            for event in events:
                p = partition_of(event.tenant, event.mode, event.subject, count)
                by_partition.setdefault(p, []).append(event)
                last[p] = event.seq or 0
            for p, part in sorted(by_partition.items()):
                added, failed = await self._apply(rebuild, p, part)
                appended += added
                skipped += failed
            position = events[-1].seq or position
            applied += len(events)
            if progress is not None:
                progress(position, await self.store.log.head())
        await self._trigger_consumer_past(last)
        checkpoints = [(engine.name, p) for engine in ENGINES for p in range(count)]
        rows = await rebuild.swap(position, checkpoints)
        return ReplayResult(applied, position, appended, skipped, rows)

    async def _apply(self, rebuild: Rebuild, partition: int, events: Sequence[Event]) -> tuple[int, int]:
        """Apply a page, each engine after the other; an event an engine cannot apply is passed
        over (and logged), as a live consumer would dead-letter it. Returns (award events
        appended, events passed over)."""
        await self.definitions.refresh()
        scopes = await self.definitions.for_scopes({(e.tenant, e.mode) for e in events})
        appended = failed = 0
        for engine in ENGINES:
            pages: list[Sequence[Event]] = [events]
            while pages:
                page = pages.pop(0)
                try:
                    effects = await engine.plan(page, scopes, rebuild.partition(partition), None)
                except Exception as exc:  # noqa: BLE001 - find the poison event, apply the rest
                    if len(page) > 1:
                        pages[:0] = [[e] for e in page]
                        continue
                    logger.error("replay: %s could not apply event %s: %s", engine.name, page[0].id, exc)
                    failed += 1
                    continue
                appended += await self._write(rebuild, partition, effects)
        return appended, failed

    async def _write(self, rebuild: Rebuild, partition: int, effects: Effects) -> int:
        effects.deliveries.clear()  # the live outbox has them (see the module's docstring)
        await rebuild.write(partition, effects)
        if not effects.appended:
            return 0
        outcomes = await self.store.log.append(effects.appended)
        return sum(1 for o in outcomes if o.status == "accepted")

    async def _trigger_consumer_past(self, last: dict[int, int]) -> None:
        """Until the live trigger checkpoint of a partition reaches what the rebuild covers,
        some webhook messages up to there may not be in the outbox yet: wait for the workers,
        with a worker of this process for the partitions none holds."""
        helper = Worker(self.settings, store=self.store, deliveries=False)
        task = asyncio.create_task(helper.run())
        try:
            for partition, seq in sorted(last.items()):
                while not await self.store.derived.wait_checkpoint([TRIGGERS], partition, seq, 1.0):
                    if task.done():
                        task.result()  # the helper failed: say why
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
