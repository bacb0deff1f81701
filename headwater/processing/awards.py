"""Awards: badges and points for a participant, and the events that announce them.

Both the facts consumer (challenge rewards) and the trigger engine (`award_badge`,
`award_points` actions) award through here, inside their own atomic write. The store makes
each award unique (a badge once per participant, a ledger entry once per cause); only an
award this write made is announced, by appending `challenge.completed`, `badge.awarded` or
`points.awarded` to the log as an event of the tenant, with an idempotency key derived from
the award, so triggers and webhooks see it and a repeat appends nothing.

Award events carry a `depth`: 1 for awards caused by a client's event, one more for awards
caused by an award event. Awards stop at `MAX_AWARD_DEPTH`, so rules that award on awards
(a challenge on `points.awarded` facts that rewards points) can never loop forever.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import msgspec

from headwater.events import Event
from headwater.ids import new_event_id
from headwater.parsing import decode_data
from headwater.processing.gamification import bucket_of, local_day, timezone
from headwater.storage.derived import ActionStatus, ProcessingState
from headwater.storage.gamification import AWARD_SOURCE, AWARD_TYPES, BadgeAward, PointsEntry

MAX_AWARD_DEPTH = 4
_encode = msgspec.json.encode


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


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


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


def grant_badge(
    state: ProcessingState, cause: Event, participant: str, badge: str, reason: str, depth: int, now: datetime
) -> bool:
    """Award the badge unless the participant holds it; True when this call awarded it."""
    award = BadgeAward(cause.tenant, cause.mode, participant, badge, cause.time, reason, cause.id)
    if not state.award_badge(award):
        return False
    data = {"badge": badge, "reason": reason, "cause_event_id": cause.id, "depth": depth}
    key = _digest(participant, badge)
    state.append_events([award_event(cause, "badge.awarded", participant, key, data, now)])
    return True


def grant_points(
    state: ProcessingState,
    cause: Event,
    participant: str,
    points: int,
    reason: str,
    cause_key: str,
    depth: int,
    now: datetime,
) -> bool:
    """Append a ledger entry keyed by (participant, cause_key); True when it is new."""
    entry_id = "pts_" + _digest(cause.tenant, cause.mode, participant, cause_key)
    settings = state.gamification_settings(cause.tenant, cause.mode)
    day = local_day(cause.time, timezone(settings.timezone) if settings else None)
    buckets = [("all_time", 0), *((kind, bucket_of(kind, day)) for kind in ("daily", "weekly", "monthly"))]
    entry = PointsEntry(entry_id, cause.tenant, cause.mode, participant, points, reason, cause.id, cause.time)
    if not state.add_points(entry, buckets):
        return False
    data = {"points": points, "reason": reason, "entry_id": entry_id, "cause_event_id": cause.id, "depth": depth}
    state.append_events([award_event(cause, "points.awarded", participant, entry_id, data, now)])
    return True


def completion_key(challenge_id: str, participant: str, occurrence: str) -> str:
    return _digest(challenge_id, participant, occurrence)


def dispatch_award(
    state: ProcessingState, event: Event, action_type: str, config: dict[str, Any], action_id: str, trigger_id: str,
    now: datetime,
) -> tuple[ActionStatus, str | None, bytes | None]:  # fmt: skip
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
        if not state.badge_defined(event.tenant, event.mode, badge):
            return "failed", f"no badge {badge!r}", None
        awarded = grant_badge(state, event, participant, badge, reason, depth, now)
        return ("dispatched" if awarded else "skipped"), None, _encode({"badge": badge, "awarded": awarded})
    points = int(config["points"])
    awarded = grant_points(state, event, participant, points, reason, f"trigger:{action_id}", depth, now)
    return ("dispatched" if awarded else "skipped"), None, _encode({"points": points, "awarded": awarded})
