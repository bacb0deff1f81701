"""Consumers of the log: each follows it by offset, applies batches, and checkpoints.

At-least-once: a batch and its checkpoint are written together (`Store.process`), so a
crash at any point either keeps both or neither; the next run re-reads from the
checkpoint, and deterministic effect ids make any repeat a no-op.

A consumer is a name plus two functions:
- `prepare(events)` (async): whatever the batch needs loaded first, e.g. compiled rules;
- `apply(state, events, prepared, now)` (sync, inside the write): the effects;
and optionally `wanted(scopes)` (async): False when a range of the log, given only the
tenants and modes in it, can have no effect at all (no rules for any of them). Such a range
is never read in full; under load (full batches) its checkpoint is written at most every
`checkpoint_seconds`, and once caught up at once (so what the checkpoint says is current for
anyone who waited). A crash in between only means those effect-free events are looked at again.

Behind the log (a full batch read), a consumer doubles its next batch, up to
`max_batch_size`: one write then covers more events, and its costs per write (the commit,
the reads of state, the pages of an index that many events touch) are shared by more. Back
with the head of the log, or when someone waits for it, it returns to `batch_size`, so a
waiter never waits behind a large batch.

No one event can stop a consumer: when preparing or applying a batch raises (anything but a
`StoreError`, which is retried as it is), the batch is applied again in halves, a failing half
again in halves, down to the failing event alone; an event that still fails after
`EVENT_ATTEMPTS` tries on its own is logged once, with its id, and skipped, and the events
behind it, every tenant's, go on. (A dead-letter list for such events is the processing
redesign's.)

A batch is read, prepared and written one after the other. Reading the next batch while one
is written was tried and measured: it gained nothing, because both halves are mostly Python
and take turns on the one interpreter lock (the writer, handing the lock back and forth for
every row, got slower by about what the reading saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from headwater.clock import Clock, system_now
from headwater.events import Event, Mode
from headwater.processing.triggers import TriggerLoader, apply_triggers
from headwater.storage.base import Store, StoreError
from headwater.storage.derived import ActionQuery, ActionRecord, ProcessingState

logger = logging.getLogger("headwater.consumer")
P = TypeVar("P")

Prepare = Callable[[Sequence[Event]], Awaitable[P]]
Apply = Callable[[ProcessingState, Sequence[Event], P, datetime], Any]


# How often one event is tried on its own before it is skipped.
EVENT_ATTEMPTS = 3


class _Batch(NamedTuple):
    end: int  # the last offset covered
    full: bool  # as many as asked for: the log goes on
    events: Sequence[Event] | None  # None: nothing in the range is wanted


class LogConsumer(Generic[P]):
    def __init__(
        self,
        store: Store,
        name: str,
        prepare: Prepare[P],
        apply: Apply[P],
        clock: Clock = system_now,
        batch_size: int = 1000,
        max_batch_size: int = 8_000,
        poll_seconds: float = 0.25,
        wanted: Callable[[set[tuple[str, Mode]]], Awaitable[bool]] | None = None,
        checkpoint_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.name = name
        self.prepare = prepare
        self.apply = apply
        self.wanted = wanted
        self.clock = clock
        self.batch_size = batch_size
        self.max_batch_size = max(batch_size, max_batch_size)
        self._limit = batch_size  # the next batch's size
        self.poll_seconds = poll_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.position: int | None = None
        self._stored: int = 0  # the checkpoint as last written
        self._waiters = 0
        self._stored_at = 0.0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()

    def wake(self) -> None:
        """Someone waits for this consumer: look now rather than at the next poll."""
        self._wake.set()

    async def _checkpoint(self) -> int:
        position: int = await self.store.process(lambda state: state.checkpoint(self.name))
        return position

    def _apply_from(
        self, state: ProcessingState, stored: int, events: Sequence[Event] | None, prepared: P | None, end: int
    ) -> bool:
        # Compare-and-set on the stored checkpoint: another process may have moved it first.
        if state.checkpoint(self.name) != stored:
            return False
        if events:
            self.apply(state, events, prepared, self.clock())  # type: ignore[arg-type]
        state.set_checkpoint(self.name, end)
        return True

    async def _store(self, events: Sequence[Event] | None, prepared: P | None, end: int) -> bool:
        stored = self._stored
        size = len(events) if events else 1
        applied = await self.store.process(lambda state: self._apply_from(state, stored, events, prepared, end), size)
        if applied:
            self._stored, self._stored_at = end, time.monotonic()
        return applied

    async def _fetch(self, start: int, limit: int) -> _Batch:
        end, scopes = await self.store.log_range(start, limit)
        full = end - start >= limit
        if end == start or (self.wanted is not None and not await self.wanted(scopes)):
            return _Batch(end, full, None)
        return _Batch(end, full, [e for e in await self.store.read_log(start, limit) if (e.seq or 0) <= end])

    async def _try(self, events: Sequence[Event], end: int) -> bool | Exception:
        """Prepare and apply `events` with the checkpoint at `end`; what that raised instead, but
        a `StoreError`: the store failing is retried as it is, never narrowed down or skipped."""
        try:
            return await self._store(events, await self.prepare(events), end)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller narrows it down to its event
            return exc

    async def _apply_batch(self, events: Sequence[Event], end: int) -> bool:
        """Apply a batch; when that fails, again in halves, so that one event can never stop
        the consumer. False when another process moved the checkpoint first."""
        applied = await self._try(events, end)
        if not isinstance(applied, Exception):
            return applied
        logger.warning("consumer %s: a batch up to seq %d failed; narrowing it down", self.name, end)
        return await self._narrow(events, end)

    async def _narrow(self, events: Sequence[Event], end: int) -> bool:
        """Apply `events` (the log up to `end`) in halves, a failing half again in halves, down
        to the failing events alone: a few writes find one bad event among thousands, and every
        other event is applied as usual."""
        if len(events) <= 1:
            return await self._apply_one(events[0], end) if events else await self._store(None, None, end)
        middle = len(events) // 2
        first_end = events[middle - 1].seq
        assert first_end is not None
        for part, part_end in ((events[:middle], first_end), (events[middle:], end)):
            applied = await self._apply_one(part[0], part_end) if len(part) == 1 else await self._try(part, part_end)
            if isinstance(applied, Exception):
                applied = await self._narrow(part, part_end)
            if not applied:
                return False
        return True

    async def _apply_one(self, event: Event, end: int) -> bool:
        """Apply one event (with the checkpoint at `end`), trying it a few times; then skip it
        with one log line, moving the checkpoint past it."""
        for _ in range(EVENT_ATTEMPTS):
            applied = await self._try([event], end)
            if not isinstance(applied, Exception):
                return applied
        logger.error(
            "consumer %s skips event %s (seq %s) after %d failed attempts: %r",
            self.name,
            event.id,
            event.seq,
            EVENT_ATTEMPTS,
            applied,
            exc_info=applied,
        )
        return await self._store(None, None, end)

    async def run_once(self) -> int:
        """Apply one batch; returns how many events it covered."""
        if self.position is None:
            self.position = self._stored = await self._checkpoint()
        start = self.position
        limit = self.batch_size if self._waiters else self._limit
        batch = await self._fetch(start, limit)
        end, full = batch.end, batch.full
        self._limit = min(limit * 2, self.max_batch_size) if full else self.batch_size
        if end == start:
            if self.position != self._stored:
                await self._store(None, None, self.position)
            return 0
        if batch.events is None:
            # Readers go by the stored checkpoint (facts are "the events before it"): store it now when
            # caught up or when someone waits for this range, else at most every checkpoint_seconds.
            urgent = not full or self._waiters > 0
            if urgent or time.monotonic() - self._stored_at > self.checkpoint_seconds:
                await self._store(None, None, end)
            self.position = end
        elif await self._apply_batch(batch.events, end):
            self.position = end
        else:
            self.position = self._stored = await self._checkpoint()
        async with self._progress:
            self._progress.notify_all()
        return end - start

    async def run_forever(self) -> None:
        while True:
            try:
                # A full batch means a backlog: keep going. Otherwise wait for the next poll, so
                # that a steady trickle of events is taken in batches rather than one by one.
                if await self.run_once() >= self.batch_size:
                    continue
            except Exception:  # the consumer must outlive any one bad batch
                logger.exception("consumer %s failed; retrying", self.name)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def wait_processed(self, seq: int, timeout: float) -> bool:
        """Wait until every event up to `seq` has been applied; False on timeout."""
        self._waiters += 1
        self.wake()
        try:
            async with self._progress:
                await asyncio.wait_for(
                    self._progress.wait_for(lambda: self.position is not None and self.position >= seq), timeout
                )
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1
        return True


class TriggerConsumer(LogConsumer[Any]):
    """Applies trigger rules to every event, in log order."""

    NAME = "triggers"

    def __init__(self, store: Store, loader: TriggerLoader, clock: Clock = system_now, **kwargs: Any) -> None:
        async def prepare(events: Sequence[Event]) -> Any:
            return await loader.routes_for({(e.tenant, e.mode) for e in events})

        async def wanted(scopes: set[tuple[str, Mode]]) -> bool:
            return any((await loader.routes_for(scopes)).values())

        super().__init__(store, self.NAME, prepare, apply_triggers, clock, wanted=wanted, **kwargs)

    async def actions_for(
        self, tenant: str, mode: Mode, event_ids: Sequence[str], up_to_seq: int, timeout: float
    ) -> dict[str, list[ActionRecord]] | None:
        """The actions each event fired, once everything up to `up_to_seq` is applied; highest
        priority first. None when processing did not catch up in time."""
        if not await self.wait_processed(up_to_seq, timeout):
            return None
        fired: dict[str, list[ActionRecord]] = {event_id: [] for event_id in event_ids}
        for event_id in fired:
            rows = await self.store.list_actions(ActionQuery(tenant, mode, event_id=event_id, limit=1000))
            # Newest first from the store; evaluation order is priority, then trigger age.
            fired[event_id] = sorted((a for _, a in reversed(rows)), key=lambda a: -a.priority)
        return fired
