"""The trigger consumer: follows the log by offset, applies triggers, checkpoints.

At-least-once: a batch and its checkpoint are written together, so a crash at any
point either keeps both or neither; the next run re-reads from the checkpoint, and
deterministic action ids make any repeat a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from headwater.clock import Clock, system_now
from headwater.events import Mode
from headwater.processing.triggers import TriggerLoader, apply_triggers
from headwater.storage.base import Store
from headwater.storage.derived import ActionQuery, ActionRecord

logger = logging.getLogger("headwater.consumer")


class TriggerConsumer:
    NAME = "triggers"

    def __init__(
        self,
        store: Store,
        loader: TriggerLoader,
        clock: Clock = system_now,
        batch_size: int = 1000,
        poll_seconds: float = 0.25,
    ) -> None:
        self.store = store
        self.loader = loader
        self.clock = clock
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.position: int | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()

    def wake(self) -> None:
        """New events were appended in this process: look now rather than at the next poll."""
        self._wake.set()

    async def _checkpoint(self) -> int:
        position: int = await self.store.process(lambda state: state.checkpoint(self.NAME))
        return position

    async def run_once(self) -> int:
        """Apply one batch; returns how many events it covered."""
        if self.position is None:
            self.position = await self._checkpoint()
        start = self.position
        events = await self.store.read_log(start, self.batch_size)
        if not events:
            return 0
        now = self.clock()
        sets = await self.loader.sets_for({(e.tenant, e.mode) for e in events})
        applied = await self.store.process(
            lambda state: apply_triggers(state, self.NAME, start, events, sets, now), size=len(events)
        )
        # Not applied: another process moved the checkpoint; continue from wherever it is.
        self.position = (events[-1].seq or start) if applied else await self._checkpoint()
        async with self._progress:
            self._progress.notify_all()
        return len(events)

    async def run_forever(self) -> None:
        while True:
            try:
                if await self.run_once():
                    continue
            except Exception:  # the consumer must outlive any one bad batch
                logger.exception("trigger consumer failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def actions_for(
        self, tenant: str, mode: Mode, event_ids: Sequence[str], up_to_seq: int, timeout: float
    ) -> dict[str, list[ActionRecord]] | None:
        """The actions each event fired, once the consumer has applied everything up to
        `up_to_seq`; highest priority first. None when processing did not catch up in time."""
        if not await self.wait_processed(up_to_seq, timeout):
            return None
        fired: dict[str, list[ActionRecord]] = {event_id: [] for event_id in event_ids}
        for event_id in fired:
            rows = await self.store.list_actions(ActionQuery(tenant, mode, event_id=event_id, limit=1000))
            # Newest first from the store; evaluation order is priority, then trigger age.
            fired[event_id] = sorted((a for _, a in reversed(rows)), key=lambda a: -a.priority)
        return fired

    async def wait_processed(self, seq: int, timeout: float) -> bool:
        """Wait until every event up to `seq` has been applied; False on timeout."""
        self.wake()
        async with self._progress:
            try:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self.position is not None and self.position >= seq), timeout
                )
            except TimeoutError:
                return False
        return True
