"""The one path every event takes: stamp → validate → append (or quarantine) → report.

Dialects call `Pipeline.ingest` with the drafts they read from their request (and
`Rejection`s for the items they could not read); they get back one result per item,
in order, and shape their own response from it.

With a bus, the accepted events of a request are published to it once they are committed
(one round trip); the entry ids are the dialects' stream ids. A bus that is down never fails
the request: the ids are then None, and the bus's catch-up carries the events later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from headwater.auth import Principal
from headwater.bus import Bus, carried
from headwater.events import (
    Event,
    EventDraft,
    EventResult,
    FieldError,
    IngestResult,
    QuarantinedEvent,
    Rejection,
)
from headwater.ids import new_event_id, new_event_ids, new_prefixed_id
from headwater.metrics import metrics
from headwater.parsing import OUT_OF_RANGE, may_hold_out_of_range, out_of_range_numbers
from headwater.ratelimit import RateLimiter
from headwater.schemas import CompiledSchema, SchemaRegistry
from headwater.storage.base import Store
from headwater.storage.log import AppendOutcome, Refused


@dataclass
class Ingested:
    """What the pipeline did with each item: the public result, plus the log offset and the
    partition of each accepted or duplicate event (the original's, for a duplicate), and with a
    bus each item's stream entry id (None when not accepted now, or when the bus did not take it;
    `stream_ids` is None without a bus)."""

    result: IngestResult
    seqs: list[int | None]
    partitions: list[int | None]
    stream_ids: list[str | None] | None = None

    def positions(self) -> list[tuple[int, int]]:
        """(partition, offset) of every event in the log: what waiting for processing waits on."""
        return [(p, s) for p, s in zip(self.partitions, self.seqs, strict=True) if p is not None and s is not None]


class _Placed:
    """Where each item of a request went in the log, filled in as appends return."""

    def __init__(self, count: int, principal: Principal) -> None:
        self.seqs: list[int | None] = [None] * count
        self.partitions: list[int | None] = [None] * count
        self.principal = principal

    def result(self, results: list[EventResult]) -> Ingested:
        metrics().ingested(self.principal.tenant, self.principal.mode, results)
        return Ingested(_summary(results), self.seqs, self.partitions)


def _raw_text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


class Pipeline:
    def __init__(
        self, store: Store, schemas: SchemaRegistry, bus: Bus | None = None, limiter: RateLimiter | None = None
    ) -> None:
        self.store = store
        self.schemas = schemas
        self.bus = bus
        self.limiter = limiter

    def stamp(
        self, principal: Principal, draft: EventDraft, received_at: datetime, event_id: str | None = None
    ) -> Event:
        """The canonical event for a draft: server id, receive time, tenant and mode."""
        return Event(
            id=event_id or new_event_id(),
            type=draft.type,
            subject=draft.subject,
            source=draft.source,
            channel=draft.channel,
            time=draft.time or received_at,
            received_at=received_at,
            idempotency_key=draft.idempotency_key,
            data=draft.data,
            tenant=principal.tenant,
            mode=principal.mode,
        )

    def _quarantine(
        self,
        principal: Principal,
        dialect: str,
        received_at: datetime,
        reasons: list[FieldError],
        raw: bytes | None,
        draft: EventDraft | None,
    ) -> QuarantinedEvent:
        # A draft holding a number out of range is not kept: many JSON readers (Go's, msgspec)
        # refuse such a number in the listing. The item as sent is kept (as a string), and a
        # replay reads it again.
        kept = None if draft is None or reasons[0].code == OUT_OF_RANGE else msgspec.structs.replace(draft, raw=None)
        return QuarantinedEvent(
            id=new_prefixed_id("qua"),
            tenant=principal.tenant,
            mode=principal.mode,
            dialect=dialect,
            type=None if draft is None else draft.type,
            received_at=received_at,
            reasons=reasons,
            raw=_raw_text(raw),
            draft=kept,
        )

    def _refusal(
        self,
        principal: Principal,
        dialect: str,
        received_at: datetime,
        draft: EventDraft,
        problems: list[FieldError],
        quarantine: bool,
    ) -> Refused | QuarantinedEvent | None:
        """What the store is told of a refused draft: a `Refused` when its idempotency key may
        make it a duplicate (the write that would store that key decides), else its quarantine
        entry (None when it is not kept)."""
        kept = self._quarantine(principal, dialect, received_at, problems, draft.raw, draft) if quarantine else None
        if draft.idempotency_key is not None:
            return Refused(principal.tenant, principal.mode, draft.idempotency_key, kept)
        return kept

    def _problems(
        self, draft: EventDraft, schema: CompiledSchema | None, numbers: bool
    ) -> tuple[list[FieldError], list[FieldError] | None]:
        """What refuses a draft (a number out of range; a strict schema's problems), and what a
        soft schema found (kept with the event as its violations)."""
        if numbers and (out_of_range := out_of_range_numbers(draft.data)):
            return out_of_range, None  # no schema can read such data
        if schema is None or schema.enforcement == "off":
            return [], None
        problems = schema.check(draft.data)
        if schema.enforcement == "strict":
            return problems, None
        return [], problems or None

    @staticmethod
    def _note(positions: list[int], outcomes: list[AppendOutcome], results: list[EventResult], placed: _Placed) -> None:
        """Each appended item's outcome, in `results` and `placed` at the item's position."""
        for index, outcome in zip(positions, outcomes, strict=True):
            placed.seqs[index] = outcome.seq
            placed.partitions[index] = outcome.partition
            if outcome.status == "duplicate":
                results[index] = EventResult(index, "duplicate", outcome.id)

    async def _refused_first(
        self,
        positions: list[int],
        appends: list[Event | Refused],
        quarantined: list[QuarantinedEvent],
        results: list[EventResult],
        placed: _Placed,
        rejected: int,
    ) -> list[tuple[int, Event | Refused]] | None:
        """For an all-or-nothing request with rejected items: whether each refused one is a
        duplicate decides the batch, so those are appended first, alone, with the quarantine
        (a refused item is then a duplicate only of what is stored already, not of an event
        earlier in the same request). Returns the events still to append, or None when the
        batch is refused (its events are then marked rejected)."""
        refused = [(index, a) for index, a in zip(positions, appends, strict=True) if isinstance(a, Refused)]
        outcomes = await self.store.log.append([a for _, a in refused], quarantined)
        self._note([index for index, _ in refused], outcomes, results, placed)
        events: list[tuple[int, Event | Refused]] = [
            (index, a) for index, a in zip(positions, appends, strict=True) if not isinstance(a, Refused)
        ]
        if len(refused) == rejected and all(results[index].status == "duplicate" for index, _ in refused):
            return events
        for index, _ in events:
            results[index] = EventResult(index, "rejected", None)
        return None

    async def precheck(self, principal: Principal) -> None:
        """The 429 a key over its rate limit gets before its request's body is read (see
        `RateLimiter.precheck`): a key whose bucket is empty, or whose client has not yet waited
        the `Retry-After` of its last 429."""
        if self.limiter is not None:
            await self.limiter.precheck(principal)

    async def admit(self, principal: Principal, count: int, dialect: str = "native") -> None:
        """Take `count` events from the key's rate limit, or raise the `ApiError` (429) that
        says why not; a replay of quarantined items is an admin's, and not limited."""
        if self.limiter is not None and dialect != "replay":
            await self.limiter.check(principal, count)

    async def ingest(
        self,
        principal: Principal,
        items: Sequence[EventDraft | Rejection],
        *,
        dialect: str = "native",
        quarantine: bool = True,
        received_at: datetime | None = None,
        all_or_nothing: bool = False,
        admitted: bool = False,
    ) -> Ingested:
        """Append every acceptable draft durably; returns once they are on disk.

        A rejected item never sinks the others: each gets its own result, and (unless
        `quarantine` is off, as for a replay) is kept in the quarantine in the same write.
        Dedup comes before validation: a refused draft whose idempotency key is stored already
        (or accepted earlier in the same request) is that duplicate, whatever its body.
        Raises `StoreError` (and its `Backpressure`) when nothing could be written.
        `received_at` lets a dialect that derives event times from the receive time (Segment's
        clock-skew correction) use the very instant the events are stamped with.
        `all_or_nothing` (seed 000's batches) stores no event unless none is rejected; the
        rejected ones are still quarantined, and every other item is then `rejected` too, with
        no errors of its own.
        Over the key's rate limit it raises the `ApiError` (429) that says so, before anything is
        stored (see `admit`; `admitted`: the caller has counted the items already).
        """
        await self.admit(principal, 0 if admitted else len(items), dialect)
        received_at = received_at or datetime.now(UTC)
        schemas: dict[str, CompiledSchema] = await self.schemas.for_scope(principal.tenant, principal.mode)
        # One scan of every draft's data together; only when it finds a candidate is each draft checked.
        numbers = may_hold_out_of_range([item.data for item in items if isinstance(item, EventDraft)])
        results: list[EventResult] = []
        appends: list[Event | Refused] = []
        positions: list[int] = []
        quarantined: list[QuarantinedEvent] = []
        ids = iter(new_event_ids(len(items))) if len(items) > 1 else None
        rejected = 0
        for index, item in enumerate(items):
            if isinstance(item, Rejection):
                rejected += 1
                results.append(EventResult(index, "rejected", None, item.errors))
                if quarantine:
                    quarantined.append(self._quarantine(principal, dialect, received_at, item.errors, item.raw, None))
                continue
            schema = schemas.get(item.type) if schemas else None
            problems = violations = None
            if numbers or schema is not None:
                problems, violations = self._problems(item, schema, numbers)
            if problems:
                rejected += 1
                results.append(EventResult(index, "rejected", None, problems))
                refusal = self._refusal(principal, dialect, received_at, item, problems, quarantine)
                if isinstance(refusal, Refused):
                    positions.append(index)
                    appends.append(refusal)
                elif refusal is not None:
                    quarantined.append(refusal)
                continue
            event = self.stamp(principal, item, received_at, next(ids) if ids else None)
            if violations:
                event = msgspec.structs.replace(event, violations=violations)
            positions.append(index)
            appends.append(event)
            results.append(EventResult(index, "accepted", event.id))
        placed = _Placed(len(items), principal)
        if all_or_nothing and rejected:
            remaining = await self._refused_first(positions, appends, quarantined, results, placed, rejected)
            if remaining is None:
                return placed.result(results)
            positions, appends, quarantined = [index for index, _ in remaining], [a for _, a in remaining], []
        if appends or quarantined:
            outcomes = await self.store.log.append(appends, quarantined)
            self._note(positions, outcomes, results, placed)
            return await self._published(placed.result(results), positions, outcomes)
        return placed.result(results)

    async def _published(self, ingested: Ingested, positions: list[int], outcomes: list[AppendOutcome]) -> Ingested:
        """`ingested` with the stream ids of the events it accepted, once the bus has them."""
        if self.bus is None:
            return ingested
        accepted = carried(outcomes)
        ids = await self.bus.publish([event for _, event in accepted])
        ingested.stream_ids = [None] * len(ingested.seqs)
        for (index, _), entry_id in zip(accepted, ids or (), strict=False):
            ingested.stream_ids[positions[index]] = entry_id
        return ingested


def _summary(results: list[EventResult]) -> IngestResult:
    accepted = duplicates = 0
    for result in results:
        if result.status == "accepted":
            accepted += 1
        elif result.status == "duplicate":
            duplicates += 1
    return IngestResult(accepted, duplicates, len(results) - accepted - duplicates, results)
