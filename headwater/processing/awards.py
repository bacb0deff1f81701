"""Awards: badges and points for a participant, and the events that announce them.

Both the facts engine (challenge rewards) and the trigger engine (`award_badge` and
`award_points` actions) award through `Awards`, which holds what a batch knows: the badges
its participants held when it began (read in bulk) and what it has granted since. A badge
is held once per participant; a ledger entry is once per cause (its id derives from it).
Only an award this batch makes is announced, by an event of the tenant appended to the log
(`challenge.completed`, `badge.awarded`, `points.awarded`) with an idempotency key derived
from the award, so triggers and webhooks see it and a repeat appends nothing.

Award events carry a `depth`: 1 for awards caused by a client's event, one more for awards
caused by an award event. Awards stop at `MAX_AWARD_DEPTH`, so rules that award on awards
(a challenge on `points.awarded` facts that rewards points) can never loop forever.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from headwater.events import Event, Mode
from headwater.ids import award_key, new_event_id, points_entry_id
from headwater.parsing import decode_data
from headwater.processing.gamification import bucket_of, local_day, timezone
from headwater.storage.effects import Effects
from headwater.storage.records import AWARD_SOURCE, AWARD_TYPES, ActionStatus, BadgeAward, PointsEntry
from headwater.storage.registry import GamificationSettings

MAX_AWARD_DEPTH = 4
POINTS_PERIODS = ("daily", "weekly", "monthly")
_encode = msgspec.json.encode

HeldBadge = tuple[str, Mode, str, str]  # (tenant, mode, participant, badge)


def is_award(event: Event) -> bool:
    return event.source == AWARD_SOURCE and event.type in AWARD_TYPES


def award_depth(event: Event) -> int:
    """0 for a client's event; the depth an award event carries."""
    if not is_award(event):
        return 0
    data = decode_data(event.data)
    depth = data.get("depth") if isinstance(data, dict) else None
    return depth if type(depth) is int and depth >= 1 else MAX_AWARD_DEPTH


def fact_type_of(event: Event) -> str:
    return event.type if is_award(event) else "custom." + event.type


def award_event(cause: Event, type_: str, participant: str, key: str, data: dict[str, Any], now: datetime) -> Event:
    """An award as an event of the cause's tenant and mode, at the cause's time."""
    return Event(
        id=new_event_id(),
        type=type_,
        subject=participant,
        source=AWARD_SOURCE,
        channel=None,
        time=cause.time,
        received_at=now,
        idempotency_key=f"headwater:{type_}:{key}",
        data=msgspec.Raw(_encode(data)),
        tenant=cause.tenant,
        mode=cause.mode,
    )


def completion_key(challenge_id: str, participant: str, occurrence: str) -> str:
    return award_key(challenge_id, participant, occurrence)


class Awards:
    """The badges and points one batch grants, against what its participants held."""

    def __init__(self, held: set[HeldBadge], effects: Effects) -> None:
        self.held = held
        self.effects = effects
        self._entries: set[str] = set()

    def announce(self, event: Event) -> None:
        self.effects.appended.append(event)

    def grant_badge(self, cause: Event, participant: str, badge: str, reason: str, depth: int, now: datetime) -> bool:
        """Award the badge unless the participant holds it; True when this call awarded it."""
        key = (cause.tenant, cause.mode, participant, badge)
        if key in self.held:
            return False
        self.held.add(key)
        self.effects.badges.append(
            BadgeAward(cause.tenant, cause.mode, participant, badge, cause.time, reason, cause.id)
        )
        data = {"badge": badge, "reason": reason, "cause_event_id": cause.id, "depth": depth}
        self.announce(award_event(cause, "badge.awarded", participant, award_key(participant, badge), data, now))
        return True

    def grant_points(
        self,
        cause: Event,
        participant: str,
        points: int,
        reason: str,
        cause_key: str,
        depth: int,
        now: datetime,
        settings: GamificationSettings,
    ) -> bool:
        """A ledger entry keyed by (participant, cause_key). The cause is new to this batch
        (a new completion, a new action), so the entry is too; the store's key on it keeps a
        repeat from counting should a checkpoint ever go back."""
        entry_id = points_entry_id(cause.tenant, cause.mode, participant, cause_key)
        if entry_id in self._entries:
            return False
        self._entries.add(entry_id)
        day = local_day(cause.time, timezone(settings.timezone))
        buckets = [("all_time", 0), *((kind, bucket_of(kind, day)) for kind in POINTS_PERIODS)]
        self.effects.points.append(
            PointsEntry(entry_id, cause.tenant, cause.mode, participant, points, reason, cause.id, cause.time, buckets)
        )
        data = {"points": points, "reason": reason, "entry_id": entry_id, "cause_event_id": cause.id, "depth": depth}
        self.announce(award_event(cause, "points.awarded", participant, entry_id, data, now))
        return True


def dispatch_award(
    awards: Awards,
    event: Event,
    action_type: str,
    config: dict[str, Any],
    action_id: str,
    trigger_id: str,
    now: datetime,
    badges: frozenset[str],
    settings: GamificationSettings,
) -> tuple[ActionStatus, str | None, bytes | None]:
    """Carry out an `award_badge` or `award_points` trigger action: (status, error, result)."""
    participant = event.subject
    if participant is None:
        return "failed", "the event has no subject to award", None
    depth = award_depth(event) + 1
    if depth > MAX_AWARD_DEPTH:
        return "failed", f"awards caused by awards stop at depth {MAX_AWARD_DEPTH}", None
    reason = str(config.get("reason") or f"trigger:{trigger_id}")
    if action_type == "award_badge":
        badge = config["badge"]
        if badge not in badges:
            return "failed", f"no badge {badge!r}", None
        awarded = awards.grant_badge(event, participant, badge, reason, depth, now)
        return ("dispatched" if awarded else "skipped"), None, _encode({"badge": badge, "awarded": awarded})
    points = int(config["points"])
    cause = f"trigger:{action_id}"
    awarded = awards.grant_points(event, participant, points, reason, cause, depth, now, settings)
    return ("dispatched" if awarded else "skipped"), None, _encode({"points": points, "awarded": awarded})
