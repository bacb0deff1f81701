"""Derived state: everything the consumers make from the log, and how they share the work.

- `StateReads`: the bulk reads an engine makes before it plans a batch, one query per kind
  of state however many rows the batch touches.
- `DerivedState.apply`: a batch's effects, its checkpoint's compare-and-set and the lease
  check in one transaction (see `storage.effects`).
- Positions, leases and dead letters: how worker processes split the partitions, survive
  each other, and skip an event that cannot be applied without stopping the rest.
- The read models the API serves (actions, enrolments, profiles, the webhook outbox,
  progress, badges, points, leaderboards, the catalog), and waiting for a checkpoint.
- `rebuild`: fresh state to replay the log into, swapped in whole at the end.

A backend only reads and writes: which rows a batch changes, and every id in them, is the
engines' decision (`headwater.processing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from headwater.events import Mode
from headwater.storage.effects import EffectBatch, Effects, NewDelivery, WindowPoint
from headwater.storage.records import (
    ActionQuery,
    ActionRecord,
    AttemptOutcome,
    BoardKind,
    BoardRow,
    CatalogEntry,
    ClaimedDelivery,
    Completion,
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    DeliveryQuery,
    Enrollment,
    ErasedEvent,
    ErasureCounts,
    ParticipantState,
    PointsPeriod,
    Position,
    ProgressRange,
    ProgressRow,
    ProgressValue,
    SubjectProfile,
)

Pair = tuple[str, str]  # (trigger or challenge id, subject)


class RebuildBusy(Exception):
    """Another rebuild of the same store is under way: a second would rebuild the same state
    for nothing, and its swap could set the derived state back to an older position."""


ScopedSubject = tuple[str, Mode, str]  # (tenant, mode, subject)


class StateReads(Protocol):
    async def window_points(self, pairs: Sequence[Pair]) -> list[WindowPoint]:
        """Every point of the rolling windows of these (trigger, subject) pairs."""

    async def firings(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[str, str, int, str]]:
        """(trigger, subject, event time µs, action id) of the actions that did not fail, for
        each (trigger, subject, low µs, high µs) range (low exclusive, high inclusive)."""

    async def existing_actions(self, action_ids: Sequence[str]) -> set[str]: ...

    async def active_enrollments(
        self, keys: Sequence[tuple[str, Mode, str, str]]
    ) -> list[tuple[str, Mode, str, str, str]]:
        """(tenant, mode, journey, subject, enrolment id) of the active enrolments of the keys
        (tenant, mode, journey, subject)."""

    async def profiles(self, keys: Sequence[ScopedSubject]) -> dict[ScopedSubject, dict[str, Any]]: ...

    async def progress(self, ranges: Sequence[ProgressRange]) -> list[ProgressValue]: ...

    async def distinct_values(self, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
        """(challenge, participant, bucket, value) of the distinct values seen in the ranges."""

    async def completions(self, pairs: Sequence[Pair]) -> list[Completion]:
        """Every completion of these (challenge, participant) pairs."""

    async def held_badges(self, keys: Sequence[ScopedSubject]) -> set[tuple[str, Mode, str, str]]:
        """(tenant, mode, participant, badge) of the badges these participants hold."""


class Rebuild(Protocol):
    """Fresh, empty derived state beside the live one (what `headwater replay` fills)."""

    def partition(self, partition: int) -> StateReads:
        """The fresh state of one partition, to plan with."""

    async def write(self, partition: int, effects: Effects) -> None: ...

    async def swap(self, position: int, checkpoints: Sequence[tuple[str, int]]) -> dict[str, int]:
        """Replace the live state with this one, and set each (consumer, partition) checkpoint
        to `position`, in one transaction. Returns the rows per table swapped in."""

    async def discard(self) -> None: ...


class DerivedState(Protocol):
    def partition(self, partition: int) -> StateReads:
        """The state of one partition, as its consumers read it before they plan a batch."""

    async def apply(self, batch: EffectBatch) -> bool:
        """Write the batch; False (and nothing written) when its checkpoint had moved, its
        lease is held by another owner, or the dead letter it retries is no longer retrying."""

    async def enqueue(self, deliveries: Sequence[NewDelivery]) -> None:
        """Put messages in the outbox outside any batch (an endpoint's test message)."""

    # Positions and leases.

    async def checkpoint(self, consumer: str, partition: int) -> int: ...

    async def checkpoints(self) -> dict[tuple[str, int], int]:
        """Every (consumer, partition) checkpoint there is."""

    async def leases(self, now: datetime) -> dict[str, str]:
        """The owner of every lease held at `now`."""

    async def heartbeat(self, owner: str, now: datetime, until: datetime) -> list[str]:
        """Note that `owner` is alive until `until`; returns every owner alive at `now`."""

    async def take_leases(self, owner: str, names: Sequence[str], now: datetime, until: datetime) -> list[str]:
        """Take or renew, until `until`, those of the leases that are free, expired or already
        the owner's; returns the ones the owner now holds."""

    async def release_leases(self, owner: str, names: Sequence[str]) -> None: ...

    async def leave(self, owner: str) -> None:
        """A worker that stops: its leases are free at once and it no longer counts as alive."""

    async def wait_checkpoint(self, consumers: Sequence[str], partition: int, seq: int, timeout: float) -> bool:
        """Wait until every one of the consumers has passed `seq` in the partition; False on timeout."""

    # Dead letters.

    async def list_dead_letters(
        self, tenant: str, mode: Mode, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeadLetter]]:
        """Newest first, each with its position for paging."""

    async def get_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str) -> DeadLetter | None: ...

    async def retry_dead_letter(self, tenant: str, mode: Mode, dead_letter_id: str, at: datetime) -> DeadLetter | None:
        """Ask for a dead letter to be applied again (status `retrying`); None when there is none
        that is dead."""

    async def retrying(self, partitions: Sequence[int]) -> list[DeadLetter]:
        """Dead letters of these partitions waiting to be applied again."""

    # Triggers.

    async def list_actions(self, query: ActionQuery) -> list[tuple[Position, ActionRecord]]:
        """Newest first, each with its position for paging."""

    async def list_enrollments(self, tenant: str, mode: Mode, journey_id: str) -> list[Enrollment]: ...

    async def get_profile(self, tenant: str, mode: Mode, subject: str) -> SubjectProfile | None: ...

    # The webhook outbox.

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None: ...

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[Position, Delivery]]:
        """Newest first, each with its position for paging."""

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        """Re-queue a failed delivery for `at`, with a fresh retry schedule; None (and nothing
        changed) when there is no such failed delivery."""

    async def list_webhook_attempts(
        self, endpoint_id: str, before: Position | None = None, limit: int = 100
    ) -> list[tuple[Position, DeliveryAttempt]]:
        """Newest first, each with its position for paging."""

    async def fail_pending(self, endpoint_id: str, reason: str) -> None:
        """Fail every pending delivery of the endpoint (it was disabled)."""

    async def forget_endpoint(self, endpoint_id: str) -> None:
        """Delete the endpoint's deliveries and attempts (it was deleted)."""

    async def claim_deliveries(
        self,
        now: datetime,
        limit: int,
        lease_until: datetime,
        first_delay: float = 0.0,
        partitions: Sequence[int] | None = None,
    ) -> list[ClaimedDelivery]:
        """Take up to `limit` pending deliveries due at `now` (a first attempt only
        `first_delay` seconds after it was queued) of these partitions (of all when None), and
        hide them from other claims until `lease_until`: a worker that dies mid-send leaves
        them to be sent again."""

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        """Record the attempt and apply its outcome to the delivery."""

    # Facts and gamification.

    async def fact_effects(self, tenant: str, mode: Mode, participant: str | None, fact_id: str) -> bytes | None:
        """What processing the fact changed (JSON), when it changed anything."""

    async def participant(self, tenant: str, mode: Mode, participant: str) -> ParticipantState: ...

    async def progress_rows(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> list[ProgressRow]: ...

    async def distinct_total(
        self, tenant: str, mode: Mode, challenge_id: str, participant: str, low: int, high: int
    ) -> int: ...

    async def list_completions(self, tenant: str, mode: Mode, challenge_id: str, participant: str) -> list[Completion]:
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

    # The catalog.

    async def list_catalog(self, tenant: str, mode: Mode) -> list[CatalogEntry]: ...

    async def catalog_types(self, scopes: Sequence[tuple[str, Mode]]) -> set[tuple[str, Mode, str]]:
        """The (tenant, mode, type) entries the catalog has for these tenants and modes."""

    # Replay.

    async def rebuild(self) -> Rebuild:
        """Fresh derived state to replay the log into; raises `RebuildBusy` while another
        rebuild of this store is open."""

    # Erasure (after the events went from the log: see `headwater.erasure`).

    async def forget_events(
        self, partition: int, tenant: str, mode: Mode, events: Sequence[ErasedEvent], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        """Delete what hangs off these events of the partition: their fact effects, rolling
        window points (of these triggers), actions with those actions' enrolments, the outbox
        messages of the events and of those actions with their attempts, and their dead letters."""

    async def uncount(self, consumer: str, tenant: str, mode: Mode, events: Sequence[ErasedEvent]) -> None:
        """Take the erased events off the catalog, those the catalog consumer `consumer` had folded
        (at or below its checkpoint, read in the same transaction); an entry left with no events
        goes, with its properties. First and last seen stay as they were."""

    async def forget_subject(
        self, tenant: str, mode: Mode, subject: str, challenge_ids: Sequence[str], trigger_ids: Sequence[str]
    ) -> ErasureCounts:
        """Delete everything derived state holds about the subject: its actions (with their
        enrolments, messages and attempts), enrolments, profile, window points (of these
        triggers), progress (in these challenges), completions, badges, points ledger and totals."""
