"""What a consumer hands the backend: the typed effects of a batch, planned in Python.

The engines decide every effect and every id from the events and the state they read in
bulk first; a backend only writes them, in one transaction together with the consumer's
checkpoint (moved by compare-and-set) and a check that the writer still holds the
partition's lease. Either all of a batch is written or none of it, and a batch planned on
state that another worker has moved since is refused as a whole.

Rows that are unique by their nature are written so that a second write of the same row
changes nothing (an action by its id, a badge per participant, a ledger entry by its
cause), which keeps a repeat harmless should a checkpoint ever go back (a replay's swap).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from headwater.events import Event, Mode
from headwater.storage.records import (
    ActionRecord,
    BadgeAward,
    CatalogCount,
    Completion,
    DeadLetter,
    DistinctValue,
    PointsEntry,
    ProgressValue,
)


class WindowPoint(NamedTuple):
    """One event counted in a trigger's rolling window for a subject."""

    trigger_id: str
    subject: str
    event_id: str
    time_us: int
    value: float


class NewEnrollment(NamedTuple):
    id: str
    tenant: str
    mode: Mode
    journey_id: str
    subject: str
    action_id: str
    enrolled_at: datetime


class ProfileWrite(NamedTuple):
    """A subject profile's attributes as they now are, whole."""

    tenant: str
    mode: Mode
    subject: str
    attributes: dict[str, Any]
    updated_at: datetime


class NewDelivery(NamedTuple):
    """A message for one endpoint; `id` derives from (endpoint, message key), so a second
    enqueue of the same message is the same row."""

    id: str
    tenant: str
    mode: Mode
    endpoint_id: str
    topic: str
    message_key: str
    payload: bytes
    at: datetime


class CatalogProperty(NamedTuple):
    tenant: str
    mode: Mode
    type: str
    name: str
    json_type: str


@dataclass
class Effects:
    """Everything one batch changes. Empty lists write nothing."""

    # Triggers.
    window_points: list[WindowPoint] = field(default_factory=list)
    window_deletes: list[tuple[str, str, str]] = field(default_factory=list)  # (trigger, subject, event id)
    actions: list[ActionRecord] = field(default_factory=list)
    enrollments: list[NewEnrollment] = field(default_factory=list)
    ended_enrollments: list[str] = field(default_factory=list)  # ids, now `restarted`
    profiles: list[ProfileWrite] = field(default_factory=list)
    deliveries: list[NewDelivery] = field(default_factory=list)
    # Facts and gamification.
    progress: list[ProgressValue] = field(default_factory=list)
    values: list[DistinctValue] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    badges: list[BadgeAward] = field(default_factory=list)
    points: list[PointsEntry] = field(default_factory=list)
    fact_effects: list[tuple[str, bytes]] = field(default_factory=list)  # (fact id, what /sync shows, as JSON)
    # The catalog.
    catalog: list[CatalogCount] = field(default_factory=list)
    properties: list[CatalogProperty] = field(default_factory=list)
    # Award events for the log: the consumer appends them before the batch is written (their
    # idempotency keys make a repeat a no-op), and the backend's write ignores them.
    appended: list[Event] = field(default_factory=list)

    def merge(self, other: Effects) -> None:
        """Add `other`'s effects after this one's (one batch made of several plans)."""
        for name in self.__dataclass_fields__:
            getattr(self, name).extend(getattr(other, name))


class CheckpointMove(NamedTuple):
    """Move a consumer's checkpoint in a partition from `expected` to `end`."""

    consumer: str
    partition: int
    expected: int
    end: int


@dataclass
class EffectBatch:
    """One transaction in one partition's derived state (`WHOLE_LOG` for the catalog): the
    effects, the checkpoint move (None for a dead letter's retry) and the dead letters it
    records or settles. `owner`, when set, must hold `lease`."""

    partition: int
    effects: Effects
    checkpoint: CheckpointMove | None
    owner: str | None = None
    lease: str | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # A retried dead letter: written only while its status is still `retrying`.
    retried: str | None = None
