"""The one path every event takes: stamp → validate → append (or quarantine) → report.

Dialects call `Pipeline.ingest` with the drafts they read from their request (and
`Rejection`s for the items they could not read); they get back one result per item,
in order, and shape their own response from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from headwater.auth import Principal
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
from headwater.schemas import CompiledSchema, SchemaRegistry
from headwater.storage.base import Store


@dataclass
class Ingested:
    """What the pipeline did with each item: the public result, plus the log offset and the
    partition of each accepted or duplicate event (the original's, for a duplicate)."""

    result: IngestResult
    seqs: list[int | None]
    partitions: list[int | None]

    def positions(self) -> list[tuple[int, int]]:
        """(partition, offset) of every event in the log: what waiting for processing waits on."""
        return [(p, s) for p, s in zip(self.partitions, self.seqs, strict=True) if p is not None and s is not None]


def _raw_text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


class Pipeline:
    def __init__(self, store: Store, schemas: SchemaRegistry) -> None:
        self.store = store
        self.schemas = schemas

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
        return QuarantinedEvent(
            id=new_prefixed_id("qua"),
            tenant=principal.tenant,
            mode=principal.mode,
            dialect=dialect,
            type=None if draft is None else draft.type,
            received_at=received_at,
            reasons=reasons,
            raw=_raw_text(raw),
            draft=None if draft is None else msgspec.structs.replace(draft, raw=None),
        )

    async def ingest(
        self,
        principal: Principal,
        items: Sequence[EventDraft | Rejection],
        *,
        dialect: str = "native",
        quarantine: bool = True,
        received_at: datetime | None = None,
    ) -> Ingested:
        """Append every acceptable draft durably; returns once they are on disk.

        A rejected item never sinks the others: each gets its own result, and (unless
        `quarantine` is off, as for a replay) is kept in the quarantine in the same write.
        Raises `StoreError` (and its `Backpressure`) when nothing could be written.
        `received_at` lets a dialect that derives event times from the receive time (Segment's
        clock-skew correction) use the very instant the events are stamped with.
        """
        received_at = received_at or datetime.now(UTC)
        schemas: dict[str, CompiledSchema] = await self.schemas.for_tenant(principal.tenant)
        results: list[EventResult] = []
        events: list[Event] = []
        positions: list[int] = []
        quarantined: list[QuarantinedEvent] = []
        ids = iter(new_event_ids(len(items))) if len(items) > 1 else None
        for index, item in enumerate(items):
            if isinstance(item, Rejection):
                results.append(EventResult(index, "rejected", None, item.errors))
                if quarantine:
                    quarantined.append(self._quarantine(principal, dialect, received_at, item.errors, item.raw, None))
                continue
            event = self.stamp(principal, item, received_at, next(ids) if ids else None)
            schema = schemas.get(item.type) if schemas else None
            if schema is not None and schema.enforcement != "off" and (problems := schema.check(item.data)):
                if schema.enforcement == "strict":
                    results.append(EventResult(index, "rejected", None, problems))
                    if quarantine:
                        quarantined.append(self._quarantine(principal, dialect, received_at, problems, item.raw, item))
                    continue
                event = msgspec.structs.replace(event, violations=problems)
            positions.append(index)
            events.append(event)
            results.append(EventResult(index, "accepted", event.id))
        seqs: list[int | None] = [None] * len(items)
        partitions: list[int | None] = [None] * len(items)
        duplicates = 0
        if events or quarantined:
            outcomes = await self.store.log.append(events, quarantined)
            for index, outcome in zip(positions, outcomes, strict=True):
                seqs[index] = outcome.seq
                partitions[index] = outcome.partition
                if outcome.status == "duplicate":
                    duplicates += 1
                    results[index] = EventResult(index, "duplicate", outcome.id)
        result = IngestResult(
            accepted=len(events) - duplicates,
            duplicates=duplicates,
            rejected=len(items) - len(events),
            results=results,
        )
        return Ingested(result, seqs, partitions)
