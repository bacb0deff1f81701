"""The canonical event and the per-event outcome of an ingest.

Every dialect translates its request into `EventDraft`s (or `Rejection`s for
items it could not read), hands them to the pipeline, and shapes the
`IngestResult` it gets back. Nothing downstream knows which dialect an event
came through.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Mode = Literal["live", "test"]
Status = Literal["accepted", "duplicate", "rejected"]

EMPTY_OBJECT = msgspec.Raw(b"{}")


class FieldError(msgspec.Struct, frozen=True):
    """One problem with one field; `field` is a dotted path such as `data` or `events.3.type`."""

    field: str
    code: str
    message: str


class Event(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """An event as the log holds it. `data` is the client's JSON object, kept verbatim.

    `violations` lists what a `soft` schema found wrong with `data`; absent when nothing was.

    Not tracked by the cyclic GC (`gc=False`): frozen, and holding only strings, times and
    error records, an event can never be part of a reference cycle, and batches hold
    thousands of them.
    """

    id: str
    type: str
    subject: str | None
    source: str | None
    channel: str | None
    time: datetime
    received_at: datetime
    idempotency_key: str | None
    data: msgspec.Raw
    tenant: str
    mode: Mode
    seq: int | None = None
    violations: list[FieldError] | None = None


class EventDraft(msgspec.Struct):
    """What a dialect hands the pipeline: a client's event before the server has stamped it.

    `time` is None when the client sent none; the pipeline then uses the receive time.
    `raw` is the item's original bytes, kept for quarantine and error reports.
    """

    type: str
    subject: str | None = None
    source: str | None = None
    channel: str | None = None
    time: datetime | None = None
    idempotency_key: str | None = None
    data: msgspec.Raw = msgspec.field(default_factory=lambda: EMPTY_OBJECT)
    raw: bytes | None = None


class Rejection(msgspec.Struct):
    """An item a dialect could not turn into a draft, with the reasons."""

    errors: list[FieldError]
    raw: bytes | None = None


class EventResult(msgspec.Struct, omit_defaults=False):
    index: int
    status: Status
    id: str | None
    errors: list[FieldError] = msgspec.field(default_factory=list)


class IngestResult(msgspec.Struct):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class QuarantinedEvent(msgspec.Struct, frozen=True):
    """A rejected item, kept with its reasons so it can be replayed once the cause is fixed.

    `raw` is the item as the client sent it (in its dialect's shape); `draft` is the
    canonical draft when the item could be read at all (a schema rejection), so a replay
    re-validates exactly what was sent, with its original time.
    """

    id: str
    tenant: str
    mode: Mode
    dialect: str
    type: str | None
    received_at: datetime
    reasons: list[FieldError]
    raw: str | None
    draft: EventDraft | None = None
    status: Literal["quarantined", "replayed"] = "quarantined"
    replayed_event_id: str | None = None
    replayed_at: datetime | None = None
