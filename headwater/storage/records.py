"""The shapes of derived state, as the consumers write it and the API reads it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple

import msgspec

from headwater.events import Mode

ActionStatus = Literal["dispatched", "skipped", "failed"]
DeliveryStatus = Literal["pending", "delivered", "failed"]
DeadLetterStatus = Literal["dead", "retrying", "resolved"]
PointsPeriod = Literal["all_time", "daily", "weekly", "monthly"]
BoardKind = Literal["sum", "distinct", "streak"]

# The checkpoint "partition" of a consumer that follows the whole log rather than one partition.
WHOLE_LOG = -1
# The lease of the one worker that runs the catalog; a partition's is `partition_lease`.
CATALOG_LEASE = "catalog"
# The lease of the one worker that applies the tenants' retention policies.
RETENTION_LEASE = "retention"
PARTITION_LEASE = "partition:"


def partition_lease(partition: int) -> str:
    return f"{PARTITION_LEASE}{partition}"


class Position(NamedTuple):
    """Where a row stands in a list that spans partitions (actions, deliveries, attempts, dead
    letters): newest first by its time, then by partition, then by its place in its partition.
    As a cursor: `<time µs>_<partition>_<row>`."""

    at_us: int
    partition: int
    row: int

    def __str__(self) -> str:
        return f"{self.at_us}_{self.partition}_{self.row}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Raises ValueError for anything `str` does not make."""
        parts = text.split("_")
        if len(parts) != 3 or not all(
            p.lstrip("-").isascii() and p.lstrip("-").isdigit() and len(p) <= 19 for p in parts
        ):
            raise ValueError(text)
        at_us, partition, row = (int(p) for p in parts)
        return cls(at_us, partition, row)


# Triggers: actions and what they touch.


class ActionRecord(msgspec.Struct, frozen=True):
    """One firing of one trigger on one event. `id` derives from (trigger, event)."""

    id: str
    tenant: str
    mode: Mode
    trigger_id: str
    trigger_name: str
    event_id: str
    event_type: str
    subject: str | None
    type: str
    config: msgspec.Raw
    status: ActionStatus
    priority: int
    event_time: datetime
    created_at: datetime
    error: str | None = None
    result: msgspec.Raw | None = None


class ActionQuery(msgspec.Struct, frozen=True):
    tenant: str
    mode: Mode
    type: str | None = None
    subject: str | None = None
    trigger_id: str | None = None
    event_id: str | None = None
    status: ActionStatus | None = None
    before: Position | None = None  # the last row of the previous page
    limit: int = 100


class Enrollment(msgspec.Struct, frozen=True):
    id: str
    journey_id: str
    subject: str
    status: Literal["active", "restarted"]
    action_id: str
    enrolled_at: datetime


class SubjectProfile(msgspec.Struct, frozen=True):
    subject: str
    attributes: dict[str, Any]
    updated_at: datetime | None


# Webhooks: the delivery outbox and every attempt.


class Delivery(msgspec.Struct, frozen=True):
    """One message for one endpoint in the outbox. `id` is the stable `webhook-id`."""

    id: str
    tenant: str
    mode: Mode
    endpoint_id: str
    topic: str
    message_key: str
    payload: msgspec.Raw
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None  # None unless pending
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryAttempt(msgspec.Struct, frozen=True):
    """One HTTP attempt: the response's status code, or the error that prevented one."""

    delivery_id: str
    endpoint_id: str
    attempt: int
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


class DeliveryQuery(msgspec.Struct, frozen=True):
    tenant: str
    mode: Mode
    status: DeliveryStatus | None = None
    endpoint_id: str | None = None
    before: Position | None = None  # the last row of the previous page
    limit: int = 100


class ClaimedDelivery(msgspec.Struct, frozen=True):
    """A delivery taken from the outbox, hidden from other claims until its claim expires."""

    id: str
    tenant: str
    mode: Mode
    endpoint_id: str
    topic: str
    payload: bytes
    attempts: int  # attempts made so far, in all
    round_attempts: int  # attempts made since it was (re-)queued: the index into the retry schedule
    partition: int  # where the outbox keeps it


class AttemptOutcome(msgspec.Struct, frozen=True):
    """What became of an attempt: the delivery's new status and when to try again."""

    attempt: DeliveryAttempt
    status: DeliveryStatus
    partition: int  # the delivery's, as claimed
    next_attempt_at: datetime | None = None


# Gamification.

# Award events: appended to the log by Headwater itself, with this source. Their facts keep the
# event type as the fact type; every other event's fact type is `custom.<type>`.
AWARD_SOURCE = "headwater"
AWARD_TYPES = ("challenge.completed", "badge.awarded", "points.awarded")


class Fact(msgspec.Struct, frozen=True):
    """What one event established (`processing.facts.make_fact`): a pure function of its
    event, so facts are read from the log, never stored."""

    fact_id: str
    fact_type: str
    participant_id: str | None
    event_id: str
    tenant: str
    mode: Mode
    data: msgspec.Raw
    occurred_at: datetime
    processed_at: datetime


class Completion(msgspec.Struct, frozen=True):
    """One completion of a challenge; unique per (challenge, participant, occurrence)."""

    tenant: str
    mode: Mode
    challenge_id: str
    participant_id: str
    occurrence: str
    period: int
    completed_at: datetime
    event_id: str


class BadgeAward(msgspec.Struct, frozen=True):
    """Unique per (tenant, mode, participant, badge)."""

    tenant: str
    mode: Mode
    participant_id: str
    badge: str
    awarded_at: datetime
    reason: str
    event_id: str


class PointsEntry(msgspec.Struct, frozen=True):
    """One line of the append-only points ledger; `id` derives from the cause, so a repeat is a
    no-op. `buckets` are the (period, bucket) totals it adds to."""

    id: str
    tenant: str
    mode: Mode
    participant_id: str
    points: int
    reason: str
    event_id: str
    at: datetime
    buckets: list[tuple[str, int]] = msgspec.field(default_factory=list)


class BoardRow(NamedTuple):
    participant_id: str
    value: float
    reached_at: datetime


class ProgressRow(NamedTuple):
    bucket: int
    value: float
    reached_at: datetime


class ParticipantState(msgspec.Struct, frozen=True):
    """What derived state holds about one participant; `challenges` are the ids with progress."""

    points: int | None
    badges: list[BadgeAward]
    challenges: list[str]


# (challenge_id, participant, low bucket, high bucket)
ProgressRange = tuple[str, str, int, int]
# (challenge_id, participant, bucket, value, reached_at µs, seq: the log offset of the last fact counted)
ProgressValue = tuple[str, str, int, float, int, int]
# (challenge_id, participant, bucket, value, first seen at µs)
DistinctValue = tuple[str, str, int, str, int]


# The catalog.


class CatalogEntry(msgspec.Struct, frozen=True):
    type: str
    count: int
    first_seen: datetime
    last_seen: datetime
    violations: int
    properties: dict[str, list[str]]


class CatalogCount(NamedTuple):
    """What a range of the log adds to one type's catalog entry."""

    tenant: str
    mode: Mode
    type: str
    events: int
    first_seen_us: int
    last_seen_us: int
    violations: int


# Processing: positions, leases and dead letters.


class DeadLetter(msgspec.Struct, frozen=True):
    """An event a consumer could not apply after `attempts` tries: skipped, kept here with the
    error, and applied again on request. `id` derives from (consumer, event)."""

    id: str
    consumer: str
    partition: int
    seq: int
    event_id: str
    tenant: str
    mode: Mode
    event_type: str
    error: str
    attempts: int
    status: DeadLetterStatus
    created_at: datetime
    updated_at: datetime


# Data protection: erasure and the audit log.


class ErasedEvent(NamedTuple):
    """An event an erasure deleted from the log: what its derived rows are found by."""

    id: str
    seq: int
    partition: int
    subject: str | None
    type: str
    flagged: bool  # a soft schema recorded violations (the catalog counts them)


def catalog_uncounts(events: Sequence[ErasedEvent], folded_to: int) -> list[tuple[int, int, str]]:
    """(events, violations, type) to take off the catalog for the erased events it had folded
    (those at or below its checkpoint `folded_to`)."""
    per_type: dict[str, list[int]] = {}
    for event in events:
        if event.seq <= folded_to:
            entry = per_type.setdefault(event.type, [0, 0])
            entry[0] += 1
            entry[1] += event.flagged
    return [(count, flagged, type_) for type_, (count, flagged) in sorted(per_type.items())]


class ErasureCounts(msgspec.Struct):
    """How many rows an erasure deleted, by kind. `facts` counts the facts that went with their
    events (a fact is its event, read from the log); `fact_effects` what processing them changed."""

    events: int = 0
    quarantined: int = 0
    facts: int = 0
    fact_effects: int = 0
    actions: int = 0
    enrollments: int = 0
    deliveries: int = 0
    attempts: int = 0
    window_points: int = 0
    dead_letters: int = 0
    profiles: int = 0
    progress: int = 0
    completions: int = 0
    badges: int = 0
    points: int = 0

    def add(self, other: ErasureCounts) -> None:
        for name in self.__struct_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


AuditValue = str | int | bool | None


class AuditEntry(msgspec.Struct, frozen=True):
    """One administrative change: who (`key_id`, the acting key, in `mode`), what (`action` on
    the resource) and when. `summary` holds a few plain values of the change, never a secret."""

    id: str
    tenant: str
    mode: Mode
    key_id: str
    action: str
    resource_type: str
    resource_id: str | None
    summary: dict[str, AuditValue]
    at: datetime
