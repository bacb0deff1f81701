"""The event log: append-only, deduplicated, split into partitions, followed by consumers.

Guarantees every backend gives:
- `append` returns only once every accepted event is durable, and dedups on
  (tenant, mode, idempotency_key) against everything retained, including earlier events of
  the same call. A duplicate reports the original's id, offset and partition.
- `seq` is the event's log offset: unique, and a consumer of a partition that has applied
  everything up to a page's `end` never needs to look at or below it again. (SQLite assigns
  offsets in commit order; a backend whose offsets commit out of order must make `end` stop
  short of any offset that may still commit.)
- An event's partition is `partitions.partition_of(tenant, mode, subject, log.partitions)`.
- `append` raises `Backpressure` instead of queueing without bound.
- An offset is never given out twice: an erasure that deletes the newest events leaves their
  offsets used (a consumer's checkpoint may already be past them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

import msgspec

from headwater.events import Event, FieldError, Mode, QuarantinedEvent
from headwater.storage.records import ErasedEvent

Scope = tuple[str, Mode]


class Refused(NamedTuple):
    """An event the pipeline refused (its data breaks a strict schema, or holds a number out of
    range) that has an idempotency key. A resend of a stored key is a duplicate, whatever its
    body: so `append` reports it as the duplicate of the event with that key when there is one
    (in the log, or earlier in the same call), and only otherwise refuses it, keeping
    `quarantined` (when given) in the same write."""

    tenant: str
    mode: Mode
    idempotency_key: str
    quarantined: QuarantinedEvent | None


class AppendOutcome(NamedTuple):
    status: Literal["accepted", "duplicate", "refused"]
    id: str | None  # for a duplicate, the original's id; None only when refused
    seq: int | None  # for a duplicate, the original's offset; None only when refused
    partition: int | None  # for a duplicate, the original's partition; None only when refused


class LogPage(NamedTuple):
    """What `read_partition` found: `events` of the wanted scopes, in log order, and `end`,
    the offset up to which the partition has now been looked at (`after` when nothing was
    there). `examined` counts the events looked at, wanted or not."""

    events: list[Event]
    end: int
    examined: int


class EventSummary(NamedTuple):
    """What the catalog folds of an event, read without making the whole event (the two
    datetimes alone cost more than the fold), and its `data` only when asked for."""

    seq: int
    tenant: str
    mode: Mode
    type: str
    received_us: int
    flagged: bool  # a soft schema recorded violations
    data: bytes | None


class EventQuery(msgspec.Struct, frozen=True):
    """A page of one tenant's events, newest `time` first.

    `time_from`/`time_to` bound the event time (from inclusive, to exclusive). `before` is the
    (time, seq) position of the last row of the previous page. `processed`, when given, keeps
    only events a consumer has passed: partition -> the consumer's checkpoint there.
    """

    tenant: str
    mode: Mode
    types: tuple[str, ...] = ()
    subject: str | None = None
    source: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    before: tuple[datetime, int] | None = None
    limit: int = 100
    processed: dict[int, int] | None = None


class QuarantineQuery(msgspec.Struct, frozen=True):
    """Quarantined items of one tenant and mode, newest first; `ids` selects exact items."""

    tenant: str
    mode: Mode
    ids: tuple[str, ...] = ()
    type: str | None = None
    status: Literal["quarantined", "replayed"] | None = "quarantined"
    received_from: datetime | None = None
    received_to: datetime | None = None
    before: str | None = None  # the id of the last item of the previous page
    limit: int = 100


class ErasureQuery(msgspec.Struct, frozen=True):
    """What an erasure deletes of one tenant and mode: the events of `subject` (any when None)
    whose event time is in [`time_from`, `time_to`) (unbounded where None); of the quarantine,
    the items of `subject` (by their draft: an item that never parsed has none) received in
    that range. Every pass deletes at most `limit` rows, in one transaction."""

    tenant: str
    mode: Mode
    subject: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    limit: int = 500


class EventLog(Protocol):
    @property
    def partitions(self) -> int:
        """How many partitions the log has: fixed when the store was created."""

    async def append(
        self, events: Sequence[Event | Refused], quarantine: Sequence[QuarantinedEvent] = ()
    ) -> list[AppendOutcome]:
        """Append `events` and keep `quarantine` in the same durable write; one outcome per
        item of `events`, in order (a `Refused` is a duplicate or refused, never accepted)."""

    async def get_event(self, tenant: str, mode: Mode, event_id: str) -> Event | None: ...

    async def get_events(self, seqs: Sequence[int]) -> list[Event]:
        """The events at these offsets, in log order (what a dead letter's retry re-reads)."""

    async def query_events(self, query: EventQuery) -> list[Event]: ...

    async def read_log(self, after_seq: int, limit: int) -> list[Event]:
        """Events of every partition with `seq > after_seq`, in log order."""

    async def read_scope(self, tenant: str, mode: Mode, after_seq: int, upto_seq: int) -> list[Event]:
        """The tenant's events with `after_seq < seq <= upto_seq`, in log order: a range of the
        whole log (every offset up to a head once seen is committed), read without making the
        other tenants' events. The caller bounds the range."""

    async def read_summaries(self, after_seq: int, limit: int, sample: int) -> list[EventSummary]:
        """As `read_log`, the summaries; with `data` for the events whose offset is a multiple of
        `sample`, None for the others."""

    async def read_partition(
        self, partition: int, after_seq: int, limit: int, scopes: frozenset[Scope] | None = None
    ) -> LogPage:
        """Look at up to `limit` events of the partition after `after_seq`; return those of
        `scopes` (every one when None, none when empty: then only `end` is read)."""

    async def head(self) -> int:
        """The highest offset committed."""

    async def partition_heads(self) -> dict[int, int]:
        """The highest offset of each partition that has events."""

    async def count_after(self, partition: int, after_seq: int) -> int:
        """How many events of the partition lie beyond `after_seq`: a consumer's lag."""

    async def wait_appended(self, head: int, timeout: float) -> int:
        """Wait until the log's head passes `head` (or `timeout` seconds); the head then."""

    # The console's charts: read from the events' and quarantine's own ids (UUIDv7, so made
    # in time order), not from counters kept on the ingest path.

    async def received_per_minute(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[int, int]]:
        """The tenant's events received at or after `since_us`, counted per minute: (the
        minute, in minutes since the epoch, and the count), oldest first."""

    async def rejection_counts(self, tenant: str, mode: Mode, since_us: int) -> list[tuple[str, int]]:
        """The reasons of the items quarantined at or after `since_us` (replayed or not),
        counted by code, most first: an item with two reasons counts in each."""

    # Quarantine: kept in the same write as the accepted events of its request.

    async def list_quarantine(self, query: QuarantineQuery) -> list[QuarantinedEvent]: ...

    async def mark_replayed(self, tenant: str, mode: Mode, outcomes: Sequence[tuple[str, str]], at: datetime) -> None:
        """Mark quarantined items (id, event id) as replayed."""

    async def update_quarantine_reasons(
        self, tenant: str, mode: Mode, reasons: Sequence[tuple[str, list[FieldError]]]
    ) -> None: ...

    # Erasure: bounded passes, each one transaction (ingest goes on between them).

    async def erase_events(self, query: ErasureQuery) -> list[ErasedEvent]:
        """Delete up to `query.limit` of the events it selects (oldest offsets first), their
        dedup keys with them; the events deleted."""

    async def erase_quarantine(self, query: ErasureQuery) -> int:
        """Delete up to `query.limit` of the quarantined items it selects; how many."""
