"""Consumers of the log: each follows one partition by offset, plans batches, and checkpoints.

A consumer is a name plus an `Engine`. Per batch it:
1. reads a page of its partition after its checkpoint (only the events of tenants that have
   definitions of the engine's kinds; the rest are passed over unread);
2. has the engine plan the page's effects (bulk reads, then pure Python);
3. appends the award events the plan made to the log (their idempotency keys derive from
   the award, so appending them again after a crash, or from a batch that is then refused,
   changes nothing);
4. hands the effects to the backend, which writes them with the checkpoint's compare-and-set
   and the partition's lease check in one transaction.

So a crash anywhere keeps all of a batch or none of it, and two workers can never both
apply a range. At-least-once reading, exactly-once effects.

An event whose planning or writing raises (anything but the store being unavailable) is a
poison event: the page is applied in halves down to the events that fail alone, such an
event is tried `attempts` times, then recorded as a dead letter (with the consumer, the error
and the attempts) and passed over; the events behind it, in its partition and every other, go
on. A dead letter whose retry was asked for is applied again on its own. The store being
unavailable (`StoreError`: a full or failing disk) is never an event's fault: the page is
tried again later, and nothing is dead-lettered.

Behind the log (a full page), a consumer doubles its next page, up to `max_batch_size`:
one write then covers more events, and its costs per write (the commit, the reads of state)
are shared by more. Back with the head of the log, it returns to `batch_size`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol

import msgspec

from headwater.bus import Bus, carried
from headwater.clock import Clock, system_now
from headwater.events import Event
from headwater.faults import crash_point
from headwater.ids import dead_letter_id
from headwater.metrics import metrics
from headwater.processing.definitions import Definitions, Scope, ScopeDefinitions
from headwater.processing.facts import plan_facts
from headwater.processing.triggers import plan_triggers
from headwater.storage.base import Store, StoreError
from headwater.storage.derived import StateReads
from headwater.storage.effects import CheckpointMove, EffectBatch, Effects
from headwater.storage.log import LogPage
from headwater.storage.records import DeadLetter
from headwater.storage.registry import DefinitionKind

logger = logging.getLogger("headwater.consumer")
ERROR_LENGTH = 1000


class Engine(Protocol):
    name: str
    kinds: tuple[DefinitionKind, ...]  # whose tenants' events it reads

    async def plan(
        self,
        events: Sequence[Event],
        scopes: dict[Scope, ScopeDefinitions],
        state: StateReads,
        now: datetime | None,
        retry: bool = False,
    ) -> Effects: ...


class FactsEngine:
    """Facts and gamification (`processing.facts`)."""

    name = "facts"
    kinds: tuple[DefinitionKind, ...] = ("challenges",)

    async def plan(
        self,
        events: Sequence[Event],
        scopes: dict[Scope, ScopeDefinitions],
        state: StateReads,
        now: datetime | None,
        retry: bool = False,
    ) -> Effects:
        return await plan_facts(events, scopes, state, now, retry)


class TriggersEngine:
    """Trigger rules and webhook subscriptions (`processing.triggers`)."""

    name = "triggers"
    kinds: tuple[DefinitionKind, ...] = ("triggers", "webhooks")

    async def plan(
        self,
        events: Sequence[Event],
        scopes: dict[Scope, ScopeDefinitions],
        state: StateReads,
        now: datetime | None,
        retry: bool = False,
    ) -> Effects:
        return await plan_triggers(events, scopes, state, now)


ENGINES: tuple[Engine, ...] = (FactsEngine(), TriggersEngine())  # facts first: what they award, triggers see


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LENGTH else text[: ERROR_LENGTH - 1] + "…"


class PartitionConsumer:
    def __init__(
        self,
        store: Store,
        definitions: Definitions,
        engine: Engine,
        partition: int,
        *,
        owner: str | None = None,
        lease: str | None = None,
        clock: Clock = system_now,
        batch_size: int = 1000,
        max_batch_size: int = 8_000,
        attempts: int = 3,
        checkpoint_seconds: float = 1.0,
        bus: Bus | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.definitions = definitions
        self.engine = engine
        self.name = engine.name
        self.partition = partition
        self.state = store.derived.partition(partition)
        self.owner = owner
        self.lease = lease
        self.clock = clock
        self.batch_size = batch_size
        self.max_batch_size = max(batch_size, max_batch_size)
        self.attempts = attempts
        self.checkpoint_seconds = checkpoint_seconds
        self._limit = batch_size
        self.position: int | None = None  # how far this consumer has looked
        self.planned = False  # whether its last page had events to plan
        self._stored = 0  # the checkpoint as last written (or read)
        self._stored_at = 0.0

    @property
    def checkpoint(self) -> int:
        """The checkpoint as last written (or read): every effect up to it is committed."""
        return self._stored

    async def _read(self, start: int, limit: int) -> tuple[LogPage, dict[Scope, ScopeDefinitions]]:
        """A page of the events the engine has definitions for, with those definitions. The
        definitions are looked at again after the read: a change in between (a new trigger
        for a tenant) could have been missed by the read's filter, so it reads again."""
        definitions = self.definitions
        await definitions.refresh()
        while True:
            # The cache may be shared (a worker's consumers): compare versions, not "changed".
            version = definitions.version
            wanted = await definitions.scopes_with(*self.engine.kinds)
            page = await self.store.log.read_partition(self.partition, start, limit, wanted)
            await definitions.refresh()
            if definitions.version == version:
                break
        scopes = await self.definitions.for_scopes({(e.tenant, e.mode) for e in page.events})
        return page, scopes

    async def _append(self, events: list[Event]) -> None:
        """Append award events; with a bus, publish them as the API publishes what it accepts,
        so the consumers of the next level (a badge's own triggers) wake now, not at the next
        look (when the bus is down, the catch-up publisher carries them later)."""
        outcomes = await self.store.log.append(events)
        if self.bus is not None:
            await self.bus.publish([event for _, event in carried(outcomes)])

    async def _write(self, effects: Effects, expected: int, end: int, dead: Sequence[DeadLetter] = ()) -> bool:
        if effects.appended:
            await self._append(effects.appended)
            crash_point("after-append")  # the award events are in the log, the batch's effects not yet
        move = CheckpointMove(self.name, self.partition, expected, end)
        batch = EffectBatch(self.partition, effects, move, self.owner, self.lease, list(dead))
        applied = await self.store.derived.apply(batch)
        if applied:
            self._stored, self._stored_at = end, time.monotonic()
            _count(self.name, effects, dead)
        return applied

    async def run_once(self) -> int:
        """Apply one page; returns how many events it looked at. Raises `StoreError` when the
        store is unavailable (the caller waits and tries again)."""
        if self.position is None:
            self.position = self._stored = await self.store.derived.checkpoint(self.name, self.partition)
        start, limit = self.position, self._limit
        page, scopes = await self._read(start, limit)
        full = page.examined >= limit
        self._limit = min(limit * 2, self.max_batch_size) if full else self.batch_size
        self.planned = bool(page.events)
        if not page.events:
            # Readers go by the stored checkpoint (facts are "the events before it"): store it now
            # when caught up, else at most every checkpoint_seconds.
            stale = time.monotonic() - self._stored_at > self.checkpoint_seconds
            moved = page.end != self._stored and (not full or stale)
            if moved and not await self._write(Effects(), self._stored, page.end):
                self.position = None  # moved elsewhere: read it again
                return page.examined
            self.position = page.end
            return page.examined
        if self.position != self._stored:
            start = self._stored  # effect-free events since the stored checkpoint count too
        try:
            effects = await self.engine.plan(page.events, scopes, self.state, self.clock())
            applied = await self._write(effects, start, page.end)
        except StoreError:
            raise
        except Exception:  # noqa: BLE001 - one of the events is poison: find it, apply the rest
            applied = await self._isolate(page.events, scopes, start, page.end)
        self.position = page.end if applied else None
        return page.examined

    async def _isolate(
        self, events: Sequence[Event], scopes: dict[Scope, ScopeDefinitions], start: int, end: int
    ) -> bool:
        """Apply a page that failed as a whole in halves, in order, down to the events that
        fail alone (for one poison event in 8,000, about 13 writes rather than 8,000); each of
        those is tried `attempts` times, then dead-lettered. False when another worker moved the
        checkpoint meanwhile."""
        stored = start
        middle = len(events) // 2  # the page as a whole failed already
        pending: list[Sequence[Event]] = [events[middle:], events[:middle]] if middle else [events]
        while pending:
            part = pending.pop()
            last = part[-1].seq
            assert last is not None
            error = await self._try(part, scopes, stored, last, attempts=1 if len(part) > 1 else self.attempts)
            if error is False:
                return False
            if error is not None:
                if len(part) > 1:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]  # the first half is popped first
                    continue
                event = part[0]
                logger.error(
                    "%s consumer, partition %d: event %s failed %d times and is dead-lettered: %s",
                    self.name, self.partition, event.id, self.attempts, _error_text(error),
                )  # fmt: skip
                if not await self._write(Effects(), stored, last, [self._dead_letter(event, error)]):
                    return False
            stored = last
        return stored == end or await self._write(Effects(), stored, end)

    async def _try(
        self, events: Sequence[Event], scopes: dict[Scope, ScopeDefinitions], stored: int, last: int, attempts: int
    ) -> BaseException | Literal[False] | None:
        """Plan and write `events` up to `attempts` times: None once written, False when the
        checkpoint had moved, or the last error."""
        error: BaseException | None = None
        for _ in range(attempts):
            try:
                effects = await self.engine.plan(events, scopes, self.state, self.clock())
                return None if await self._write(effects, stored, last) else False
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - the caller splits the page or dead-letters it
                error = exc
        return error

    def _dead_letter(self, event: Event, error: BaseException, attempts: int | None = None) -> DeadLetter:
        assert event.seq is not None
        now = self.clock()
        return DeadLetter(
            id=dead_letter_id(self.name, event.id),
            consumer=self.name,
            partition=self.partition,
            seq=event.seq,
            event_id=event.id,
            tenant=event.tenant,
            mode=event.mode,
            event_type=event.type,
            error=_error_text(error),
            attempts=attempts or self.attempts,
            status="dead",
            created_at=now,
            updated_at=now,
        )

    async def retry(self, dead: DeadLetter) -> bool:
        """Apply a dead letter's event again, on its own; True when it went through (the dead
        letter is then resolved), False when it failed again (it is dead again, one attempt on)."""
        events = await self.store.log.get_events([dead.seq])
        scopes = await self.definitions.for_scopes({(e.tenant, e.mode) for e in events})
        now = self.clock()
        try:
            effects = await self.engine.plan(events, scopes, self.state, now, retry=True)
            if effects.appended:
                await self._append(effects.appended)
            resolved = msgspec.structs.replace(dead, status="resolved", updated_at=now)
            batch = EffectBatch(self.partition, effects, None, self.owner, self.lease, [resolved], retried=dead.id)
            return await self.store.derived.apply(batch)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded with the dead letter
            again = msgspec.structs.replace(
                dead, status="dead", error=_error_text(exc), attempts=dead.attempts + 1, updated_at=now
            )
            again_batch = EffectBatch(self.partition, Effects(), None, self.owner, self.lease, [again], dead.id)
            await self.store.derived.apply(again_batch)
            return False


def _count(consumer: str, effects: Effects, dead: Sequence[DeadLetter]) -> None:
    """What a written batch did, for /metrics: counted once it is stored (a batch a crash undid
    is done again, and counted again: these are counts of work, the store has the records)."""
    if effects.actions:
        firings: Counter[tuple[str, str]] = Counter((a.tenant, a.mode) for a in effects.actions)
        for (tenant, mode), count in firings.items():
            metrics().firings.labels(tenant, mode).inc(count)
    if dead:
        metrics().dead_letters.labels(consumer).inc(len(dead))
