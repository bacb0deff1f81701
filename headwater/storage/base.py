"""The storage contract: an append-only event log plus the tenant and key registry.

The pipeline and the routes talk only to `Store`. A backend (SQLite today,
PostgreSQL and Redis Streams later) implements it and is picked by `open_store`.

Guarantees every backend gives:
- `append` returns only once every accepted event is durable, and dedups on
  (tenant, mode, idempotency_key) against everything retained, including
  earlier events of the same call. A key that is the id of an event of the same
  tenant and mode is a duplicate of that event too (an import keys an exported
  event that had no key by its old id). A duplicate reports the original's id.
  Dedup comes before validation: an item the pipeline refused but whose key
  may be stored already is passed as a `Refused`, and the same dedup decides,
  in the same write, whether it is that duplicate or refused (and quarantined).
- `seq` is the log offset: unique, increasing in commit order, so a consumer
  that has processed everything up to `seq` never needs to look below it.
- `append` raises `Backpressure` instead of queueing without bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

import msgspec

from headwater.events import Event, FieldError, Mode, QuarantinedEvent
from headwater.storage.derived import TriggerStore, WebhookStore
from headwater.storage.gamification import GamificationStore

Role = Literal["admin", "editor", "ingest", "viewer"]
Enforcement = Literal["off", "soft", "strict"]


class StoreError(Exception):
    """The store could not complete a write; nothing of that write is acknowledged."""


class Backpressure(StoreError):
    """The write queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("write queue is full")
        self.retry_after = retry_after


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
    id: str | None  # None only when refused
    seq: int | None  # for a duplicate, the original's offset; None only when refused


class EventQuery(msgspec.Struct, frozen=True):
    """A page of one tenant's events, newest `time` first.

    `time_from`/`time_to` bound the event time (from inclusive, to exclusive).
    `before` is the (time, seq) position of the last row of the previous page.
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


class KeyRecord(msgspec.Struct, frozen=True):
    id: str
    tenant: str
    role: Role
    mode: Mode
    prefix: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None = None


class SchemaVersion(msgspec.Struct, frozen=True):
    type: str
    version: int
    enforcement: Enforcement
    schema: msgspec.Raw
    created_at: datetime


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


class CatalogEntry(msgspec.Struct, frozen=True):
    type: str
    count: int
    first_seen: datetime
    last_seen: datetime
    violations: int
    properties: dict[str, list[str]]


class Fact(msgspec.Struct, frozen=True):
    """What one event established, made by the facts consumer (`processing/facts.py`) as it
    follows the log. `fact_id` derives from the event id, so re-deriving it changes nothing.
    Facts and everything they drive are read and listed through `GamificationStore`."""

    fact_id: str
    fact_type: str
    participant_id: str | None
    event_id: str
    tenant: str
    mode: Mode
    data: msgspec.Raw
    occurred_at: datetime
    processed_at: datetime


class Store(TriggerStore, WebhookStore, GamificationStore, Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `StoreError` unless the store accepts writes now."""

    # The event log.
    async def append(
        self, events: Sequence[Event | Refused], quarantine: Sequence[QuarantinedEvent] = ()
    ) -> list[AppendOutcome]:
        """Append `events` and keep `quarantine` in the same durable write; one outcome per
        item of `events`, in order (a `Refused` is a duplicate or refused, never accepted)."""

    async def get_event(self, tenant: str, mode: Mode, event_id: str) -> Event | None: ...

    async def query_events(self, query: EventQuery) -> list[Event]: ...

    async def read_log(self, after_seq: int, limit: int) -> list[Event]:
        """Events of every tenant with `seq > after_seq`, in log order: what consumers follow."""

    async def log_range(self, after_seq: int, limit: int) -> tuple[int, set[tuple[str, Mode]]]:
        """For the same range `read_log` would return: its last seq (`after_seq` when empty) and
        the tenants and modes in it. Cheap: lets a consumer skip ranges it has no rules for."""

    # Tenants and keys.
    async def ensure_tenant(self, tenant: str) -> bool:
        """Create the tenant if it is new; True when it was created."""

    async def count_tenants(self) -> int: ...

    async def add_key(self, record: KeyRecord, key_hash: str) -> None: ...

    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    async def list_keys(self, tenant: str) -> list[KeyRecord]: ...

    async def revoke_key(self, tenant: str, key_id: str, at: datetime) -> bool: ...

    # Schemas: per tenant and mode, like everything a tenant defines.
    async def put_schema(
        self, tenant: str, mode: Mode, type_: str, schema: bytes, enforcement: Enforcement, at: datetime
    ) -> SchemaVersion:
        """Store the next version of the type's schema."""

    async def latest_schemas(self, tenant: str, mode: Mode) -> list[SchemaVersion]: ...

    async def schema_versions(self, tenant: str, mode: Mode, type_: str) -> list[SchemaVersion]: ...

    # Quarantine.
    async def list_quarantine(self, query: QuarantineQuery) -> list[QuarantinedEvent]: ...

    async def mark_replayed(self, tenant: str, mode: Mode, outcomes: Sequence[tuple[str, str]], at: datetime) -> None:
        """Mark quarantined items (id, event id) as replayed."""

    async def update_quarantine_reasons(
        self, tenant: str, mode: Mode, reasons: Sequence[tuple[str, list[FieldError]]]
    ) -> None: ...

    # The event catalog, derived from the log.
    async def refresh_catalog(self, max_events: int) -> int:
        """Fold up to `max_events` events not yet counted into the catalog; returns how many."""

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]: ...
