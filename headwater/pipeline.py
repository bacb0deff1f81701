"""The one path every event takes: stamp → validate → append → report.

Dialects call `Pipeline.ingest` with the drafts they read from their request
(and `Rejection`s for the items they could not read); they get back one result
per item, in order, and shape their own response from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from headwater.auth import Principal
from headwater.events import (
    Event,
    EventDraft,
    EventResult,
    IngestResult,
    Rejection,
)
from headwater.ids import new_event_id
from headwater.storage.base import Store


class Pipeline:
    def __init__(self, store: Store) -> None:
        self.store = store

    def stamp(self, principal: Principal, draft: EventDraft, received_at: datetime) -> Event:
        """The canonical event for a draft: server id, receive time, tenant and mode."""
        return Event(
            id=new_event_id(),
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

    async def ingest(self, principal: Principal, items: Sequence[EventDraft | Rejection]) -> IngestResult:
        """Append every draft durably; returns once the accepted ones are on disk.

        A rejected item never sinks the others: each gets its own result.
        Raises `StoreError` (and its `Backpressure`) when nothing could be written.
        """
        received_at = datetime.now(UTC)
        results: list[EventResult] = []
        events: list[Event] = []
        positions: list[int] = []
        for index, item in enumerate(items):
            if isinstance(item, Rejection):
                results.append(EventResult(index, "rejected", None, item.errors))
                continue
            event = self.stamp(principal, item, received_at)
            positions.append(index)
            events.append(event)
            results.append(EventResult(index, "accepted", event.id))
        duplicates = 0
        if events:
            outcomes = await self.store.append(events)
            for index, outcome in zip(positions, outcomes, strict=True):
                if outcome.status == "duplicate":
                    duplicates += 1
                    results[index] = EventResult(index, "duplicate", outcome.id)
        rejected = len(items) - len(events)
        return IngestResult(
            accepted=len(events) - duplicates,
            duplicates=duplicates,
            rejected=rejected,
            results=results,
        )
