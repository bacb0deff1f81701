"""The storage contract for facts and gamification: definitions, derived state and its reads.

Definitions (badges, challenges, tenant settings) are written by the API. Facts are not
stored: a fact is a pure function of its event, read from the log up to the facts consumer's
checkpoint. Everything else (challenge progress, completions, badge awards, the points
ledger) is derived from the log by the facts consumer inside `Store.process`, through the
`GamificationState` methods, and can be rebuilt by `headwater replay`. Uniqueness is the
store's: an award is a row under a UNIQUE key written with INSERT OR IGNORE, and the methods
say whether the row is new.

Progress is kept per (challenge, participant, bucket). A bucket is an integer period index
in the tenant's time zone: 0 for `all_time`, the proleptic ordinal of the local day for
`daily` and `rolling:<N>d`, of the local Monday // 7 for `weekly`, year * 12 + month - 1 for
`monthly` (see `headwater.processing.gamification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

import msgspec

from headwater.events import Event, Mode

# Award events: appended to the log by Headwater itself, with this source. Their facts keep the
# event type as the fact type; every other event's fact type is `custom.<type>`.
AWARD_SOURCE = "headwater"
AWARD_TYPES = ("challenge.completed", "badge.awarded", "points.awarded")

if TYPE_CHECKING:
    from headwater.storage.base import Fact

PointsPeriod = Literal["all_time", "daily", "weekly", "monthly"]
BoardKind = Literal["sum", "distinct", "streak"]


def fact_id_for(event_id: str) -> str:
    """The one fact of an event: "fact_" + the event id's hex."""
    return "fact_" + event_id.removeprefix("evt_")


class BadgeRecord(msgspec.Struct, frozen=True):
    key: str
    name: str
    description: str | None
    image_url: str | None
    created_at: datetime
    updated_at: datetime


class ChallengeRecord(msgspec.Struct, frozen=True):
    """A challenge as stored; `definition` is the validated definition as the client wrote it."""

    id: str
    tenant: str
    mode: Mode
    definition: msgspec.Raw
    created_at: datetime
    updated_at: datetime


class GamificationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per tenant and mode. `levels` are ascending point thresholds: a participant's level is
    how many of them their points reach (null when there are none)."""

    timezone: str = "UTC"
    levels: list[int] = msgspec.field(default_factory=list)


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
    """One line of the append-only points ledger; `id` derives from the cause, so a repeat is a no-op."""

    id: str
    tenant: str
    mode: Mode
    participant_id: str
    points: int
    reason: str
    event_id: str
    at: datetime


class FactQuery(msgspec.Struct, frozen=True):
    """Facts of one tenant and mode, newest `occurred_at` first (as the events API lists
    events); `time_from`/`time_to` bound `occurred_at` (from inclusive, to exclusive);
    `before` is the (occurred_at µs, log offset) of the last row of the previous page."""

    tenant: str
    mode: Mode
    participant: str | None = None
    fact_type: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    before: tuple[int, int] | None = None
    limit: int = 100


class BoardRow(NamedTuple):
    participant_id: str
    value: float
    reached_at: datetime


class ProgressRow(NamedTuple):
    bucket: int
    value: float
    reached_at: datetime


class ParticipantRecord(msgspec.Struct, frozen=True):
    """What the store holds about one participant; `challenges` are the ids with progress."""

    participant_id: str
    points: int
    badges: list[BadgeAward]
    challenges: list[str]


# (challenge_id, participant, low bucket, high bucket)
ProgressRange = tuple[str, str, int, int]
# (challenge_id, participant, bucket, value, reached_at µs, seq: the log offset of the last fact counted)
ProgressValue = tuple[str, str, int, float, int, int]


class GamificationState(Protocol):
    """Synchronous writes and reads on derived state, inside the consumer's atomic write.

    Progress is read and written in bulk, once per batch: `load_*` take (challenge_id,
    participant, low bucket, high bucket) ranges; `save_*` write rows back."""

    def append_events(self, events: Sequence[Event]) -> list[bool]:
        """Append events to the log in this write (dedup applies); True for each one appended."""

    def put_fact_effects(self, effects: Sequence[tuple[str, bytes]]) -> None:
        """What processing each fact changed (progress, awards), as JSON, for `/sync`."""

    def load_progress(self, ranges: Sequence[ProgressRange]) -> list[ProgressValue]:
        """The progress rows in the ranges."""

    def save_progress(self, rows: Sequence[ProgressValue]) -> None:
        """Create or overwrite progress rows."""

    def load_values(self, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
        """(challenge_id, participant, bucket, value) of the distinct values seen in the ranges."""

    def save_values(self, rows: Sequence[tuple[str, str, int, str, int]]) -> None:
        """New distinct values: (challenge_id, participant, bucket, value, first seen at µs)."""

    def record_completion(self, completion: Completion) -> bool:
        """True when this (challenge, participant, occurrence) was not completed before."""

    def completion_between(self, challenge_id: str, participant: str, low: int, high: int) -> bool:
        """Whether a completion with its period in [low, high] exists."""

    def badge_defined(self, tenant: str, mode: Mode, key: str) -> bool: ...

    def gamification_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None: ...

    def award_badge(self, award: BadgeAward) -> bool:
        """True when the participant did not hold the badge before."""

    def add_points(self, entry: PointsEntry, buckets: Sequence[tuple[str, int]]) -> bool:
        """Append to the ledger and add to the totals of each (period, bucket); False (and
        nothing changed) when the entry's id exists."""


class GamificationStore(Protocol):
    async def gamification_version(self) -> int:
        """A counter bumped by every change to a badge, challenge or setting (any tenant)."""

    async def create_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool:
        """False (and nothing written) when the key is taken."""

    async def update_badge(self, tenant: str, mode: Mode, badge: BadgeRecord) -> bool: ...

    async def get_badge(self, tenant: str, mode: Mode, key: str) -> BadgeRecord | None: ...

    async def list_badges(self, tenant: str, mode: Mode) -> list[BadgeRecord]: ...

    async def delete_badge(self, tenant: str, mode: Mode, key: str) -> bool: ...

    async def put_challenge(self, record: ChallengeRecord) -> None:
        """Create or replace."""

    async def get_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> ChallengeRecord | None: ...

    async def list_challenges(self, tenant: str, mode: Mode) -> list[ChallengeRecord]: ...

    async def delete_challenge(self, tenant: str, mode: Mode, challenge_id: str) -> bool: ...

    async def get_settings(self, tenant: str, mode: Mode) -> GamificationSettings | None: ...

    async def put_settings(self, tenant: str, mode: Mode, settings: GamificationSettings, at: datetime) -> None: ...

    async def list_facts(self, query: FactQuery) -> list[tuple[Fact, int]]:
        """Each with its event's log offset, for paging."""

    async def fact_for_event(self, tenant: str, mode: Mode, event_id: str) -> tuple[Fact, bytes | None] | None:
        """The event's fact and its effects (JSON), once the facts consumer has made it."""

    async def get_participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantRecord | None:
        """None when the participant has no fact, points or badge."""

    async def progress_rows(self, challenge_id: str, participant: str, low: int, high: int) -> list[ProgressRow]: ...

    async def distinct_total(self, challenge_id: str, participant: str, low: int, high: int) -> int: ...

    async def list_completions(self, challenge_id: str, participant: str) -> list[Completion]:
        """Oldest period first."""

    async def points_board(
        self, tenant: str, mode: Mode, period: PointsPeriod, bucket: int, limit: int
    ) -> list[BoardRow]:
        """Most points first; ties: earlier `reached_at`, then participant id."""

    async def challenge_board(
        self, challenge_id: str, kind: BoardKind, low: int, high: int, limit: int
    ) -> list[BoardRow]:
        """Participants by progress over the buckets in [low, high] (`streak`: the run of
        consecutive buckets ending at or after `low`, up to `high`); ties as `points_board`."""
