"""The storage contract for facts and gamification: definitions, derived state and its reads.

Definitions (badges, challenges, tenant settings) are written by the API. Everything else
(facts, challenge progress, completions, badge awards, the points ledger) is derived from the
log by the facts consumer inside `Store.process`, through the `GamificationState` methods,
and can be rebuilt by `headwater replay`. Uniqueness is the store's: an award is a row under
a UNIQUE key written with INSERT OR IGNORE, and the methods say whether the row is new.

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

if TYPE_CHECKING:
    from headwater.storage.base import Fact

PointsPeriod = Literal["all_time", "daily", "weekly", "monthly"]
BoardKind = Literal["sum", "distinct", "streak"]


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
    """Facts of one tenant and mode, newest `occurred_at` first; `before` is the
    (occurred_at, fact_id) of the last row of the previous page."""

    tenant: str
    mode: Mode
    participant: str | None = None
    fact_type: str | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    before: tuple[datetime, str] | None = None
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


class GamificationState(Protocol):
    """Synchronous writes and reads on derived state, inside the consumer's atomic write."""

    def append_events(self, events: Sequence[Event]) -> list[bool]:
        """Append events to the log in this write (dedup applies); True for each one appended."""

    def put_fact(self, fact: Fact) -> bool:
        """Keep the fact unless one with its id exists; True when it is new."""

    def put_fact_effects(self, fact_id: str, effects: bytes) -> None:
        """What processing the fact changed (progress, awards), as JSON, for `/sync`."""

    def add_progress(self, challenge_id: str, participant: str, bucket: int, delta: float, at_us: int) -> float:
        """Add `delta` to a bucket's value (reached_at: the latest contributing time); the new value."""

    def mark_period(self, challenge_id: str, participant: str, bucket: int, at_us: int) -> bool:
        """Count a fact in a streak period (reached_at: the earliest); True when the period is new."""

    def run_around(self, challenge_id: str, participant: str, bucket: int) -> tuple[int, int]:
        """(first, last) bucket of the run of consecutive buckets that holds `bucket`."""

    def add_distinct(self, challenge_id: str, participant: str, bucket: int, value: str) -> bool:
        """Note a value in a bucket; True when it is new there."""

    def distinct_days(self, challenge_id: str, participant: str, value: str, low: int, high: int) -> list[int]:
        """The buckets in [low, high] holding `value`."""

    def distinct_count(self, challenge_id: str, participant: str, low: int, high: int) -> int:
        """Distinct values over the buckets in [low, high]."""

    def progress_range(self, challenge_id: str, participant: str, low: int, high: int) -> dict[int, float]:
        """Bucket values in [low, high]."""

    def record_completion(self, completion: Completion) -> bool:
        """True when this (challenge, participant, occurrence) was not completed before."""

    def completion_between(self, challenge_id: str, participant: str, low: int, high: int) -> bool:
        """Whether a completion with its period in [low, high] exists."""

    def badge_defined(self, tenant: str, mode: Mode, key: str) -> bool: ...

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

    async def list_facts(self, query: FactQuery) -> list[Fact]: ...

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
