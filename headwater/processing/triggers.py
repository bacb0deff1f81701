"""The trigger engine: which triggers an event fires, and what their actions do.

A batch is planned in three steps:
1. Match (pure): each event against its tenant's triggers for its type (and mapped types),
   by their compiled conditions.
2. Read (bulk): the state the matches need, one query per kind: window points, recent
   firings for cooldowns, which of the actions exist already, active enrolments, profiles,
   badges held.
3. Apply (pure, in log order, in memory): windows, cooldowns, actions and their effects,
   and the webhook messages for endpoints subscribed to actions and events.

Every id derives from its cause (an action from trigger and event, a delivery from endpoint
and message, an enrolment from its action), so a batch planned twice writes the same rows.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from headwater.clock import to_us
from headwater.events import Event, Mode
from headwater.ids import action_id, delivery_id, enrollment_id
from headwater.parsing import is_number
from headwater.processing.awards import Awards, dispatch_award
from headwater.processing.conditions import EventView
from headwater.processing.definitions import Scope, ScopeDefinitions
from headwater.processing.pacing import pace
from headwater.processing.rules import CompiledTrigger
from headwater.storage.derived import StateReads
from headwater.storage.effects import Effects, NewDelivery, NewEnrollment, ProfileWrite, WindowPoint
from headwater.storage.records import ActionRecord, ActionStatus

_encode = msgspec.json.encode
Pair = tuple[str, str]  # (trigger id, subject)


class WebhookMessage(msgspec.Struct):
    """The body of every webhook Headwater sends, in the Standard Webhooks shape."""

    type: str
    timestamp: datetime
    data: dict[str, Any]


def message(topic: str, at: datetime, **data: Any) -> bytes:
    return _encode(WebhookMessage(topic, at, data))


class _Match(NamedTuple):
    event: Event
    view: EventView | None  # None when no trigger listens to its type (its data is never read)
    triggers: tuple[CompiledTrigger, ...]
    scope: ScopeDefinitions


class _Window:
    """A trigger's rolling window for one subject: its points, in memory for the batch. What
    the batch changed is written as the difference from what was read, so that points added
    and pruned in any order come out as they would one event at a time."""

    __slots__ = ("points", "read")

    def __init__(self) -> None:
        self.points: dict[str, tuple[int, float]] = {}  # event id -> (time µs, value)
        self.read: set[str] = set()

    def load(self, event_id: str, at: int, value: float) -> None:
        self.points[event_id] = (at, value)
        self.read.add(event_id)

    def add(self, event_id: str, at: int, value: float) -> None:
        self.points.setdefault(event_id, (at, value))

    def totals(self, start: int, end: int) -> tuple[int, float]:
        inside = [value for at, value in self.points.values() if start < at <= end]
        return len(inside), math.fsum(inside)

    def prune(self, before: int) -> None:
        for event_id in [e for e, (at, _) in self.points.items() if at < before]:
            del self.points[event_id]

    def changes(self, trigger_id: str, subject: str, effects: Effects) -> None:
        effects.window_points.extend(
            WindowPoint(trigger_id, subject, e, at, value)
            for e, (at, value) in self.points.items()
            if e not in self.read
        )
        effects.window_deletes.extend((trigger_id, subject, e) for e in self.read if e not in self.points)


class _Batch:
    """What one batch reads and changes, in memory."""

    def __init__(self, effects: Effects) -> None:
        self.effects = effects
        self.windows: dict[Pair, _Window] = {}
        self.firings: dict[Pair, list[tuple[int, str]]] = {}  # (event time µs, action id)
        self.existing: set[str] = set()
        self.enrolled: dict[tuple[str, Mode, str, str], list[str]] = {}  # active enrolment ids
        self.profiles: dict[tuple[str, Mode, str], dict[str, Any]] = {}
        self.changed_profiles: dict[tuple[str, Mode, str], datetime] = {}
        self.awards = Awards(set(), effects)


async def _match(events: Sequence[Event], scopes: dict[Scope, ScopeDefinitions]) -> list[_Match]:
    matches = []
    for i, event in enumerate(events):
        await pace(i)
        scope = scopes.get((event.tenant, event.mode))
        if scope is None or not scope.routes:
            continue
        candidates = scope.triggers.for_event_type(event.type)
        view = EventView(event) if candidates else None
        fired = tuple(t for t in candidates if t.matches(view)) if view is not None else ()
        if fired or scope.endpoints:
            matches.append(_Match(event, view, fired, scope))
    return matches


@dataclass
class _Wanted:
    """The keys of the state a batch's matches read."""

    windows: set[Pair] = field(default_factory=set)
    cooldowns: dict[Pair, tuple[int, int]] = field(default_factory=dict)  # (low, high] event times
    actions: list[str] = field(default_factory=list)
    journeys: set[tuple[str, Mode, str, str]] = field(default_factory=set)
    subjects: set[tuple[str, Mode, str]] = field(default_factory=set)
    participants: set[tuple[str, Mode, str]] = field(default_factory=set)

    def add(self, m: _Match) -> None:
        event, subject = m.event, m.event.subject or ""
        at = to_us(event.time)
        for trigger in m.triggers:
            pair = (trigger.id, subject)
            self.actions.append(action_id(trigger.id, event.id))
            if trigger.window is not None:
                self.windows.add(pair)
            if trigger.cooldown_us is not None:
                low, high = self.cooldowns.get(pair, (at - trigger.cooldown_us, at))
                self.cooldowns[pair] = (min(low, at - trigger.cooldown_us), max(high, at))
            kind = trigger.action_type
            if kind == "journey_enroll":
                self.journeys.add((event.tenant, event.mode, trigger.action_config["journeyId"], subject))
            elif event.subject is not None and kind in ("update_attribute", "award_badge"):
                keys = self.subjects if kind == "update_attribute" else self.participants
                keys.add((event.tenant, event.mode, event.subject))


async def _read(state: StateReads, matches: list[_Match], batch: _Batch) -> None:
    wanted = _Wanted()
    for m in matches:
        wanted.add(m)
    points, firings, existing, enrolled, profiles, held = await asyncio.gather(
        state.window_points(sorted(wanted.windows)),
        state.firings([(t, s, low, high) for (t, s), (low, high) in sorted(wanted.cooldowns.items())]),
        state.existing_actions(wanted.actions),
        state.active_enrollments(sorted(wanted.journeys)),
        state.profiles(sorted(wanted.subjects)),
        state.held_badges(sorted(wanted.participants)),
    )
    batch.windows = {pair: _Window() for pair in wanted.windows}
    for p in points:
        batch.windows[p.trigger_id, p.subject].load(p.event_id, p.time_us, p.value)
    batch.firings = {pair: [] for pair in wanted.cooldowns}
    for trigger_id, subject, at, act in firings:
        batch.firings[trigger_id, subject].append((at, act))
    batch.existing = existing
    batch.enrolled = {key: [] for key in wanted.journeys}
    for tenant, mode, journey, subject, id_ in enrolled:
        batch.enrolled[tenant, mode, journey, subject].append(id_)
    batch.profiles = profiles
    batch.awards.held = held


def _crosses_window(batch: _Batch, trigger: CompiledTrigger, view: EventView, subject: str) -> bool:
    """Fire when the rolling total first reaches the threshold: before < threshold <= after."""
    window = trigger.window
    assert window is not None
    value = 1.0
    if window.sum_field is not None:
        raw = view.get(window.sum_field)
        if not is_number(raw):
            return False
        value = float(raw)
    event = view.event
    at = to_us(event.time)
    points = batch.windows[trigger.id, subject]
    points.add(event.id, at, value)
    count, total = points.totals(at - window.within_us, at)
    after = float(count) if window.sum_field is None else total
    before = after - value
    # Points older than two windows can no longer count for any event still arriving in order.
    points.prune(at - 2 * window.within_us)
    return before < window.threshold <= after


def _cooling_down(batch: _Batch, trigger: CompiledTrigger, event: Event, subject: str, act: str) -> bool:
    assert trigger.cooldown_us is not None
    at = to_us(event.time)
    times = [t for t, other in batch.firings[trigger.id, subject] if t <= at and other != act]
    return bool(times) and at - max(times) < trigger.cooldown_us


def _deliver(
    batch: _Batch, event: Event, topic: str, key: str, body: bytes, at: datetime, targets: list[str]
) -> list[str]:
    ids = [delivery_id(target, key) for target in targets]
    batch.effects.deliveries.extend(
        NewDelivery(id_, event.tenant, event.mode, target, topic, key, body, at)
        for id_, target in zip(ids, targets, strict=True)
    )
    return ids


def _enroll(batch: _Batch, event: Event, journey: str, how: str, act: str, at: datetime) -> str:
    """The enrolment policy: `skip_if_active` (the default), `restart`, `allow_multiple`."""
    key = (event.tenant, event.mode, journey, event.subject or "")
    active = batch.enrolled[key]
    outcome = "enrolled"
    if active and how == "skip_if_active":
        return "skipped"
    if active and how == "restart":
        batch.effects.ended_enrollments.extend(active)
        active.clear()
        outcome = "restarted"
    new_id = enrollment_id(act)
    batch.effects.enrollments.append(NewEnrollment(new_id, event.tenant, event.mode, journey, key[3], act, at))
    active.append(new_id)
    return outcome


def _set_attribute(batch: _Batch, event: Event, config: dict[str, Any], view: EventView, at: datetime) -> str | None:
    """The error, if the attribute could not be set."""
    value = config["value"] if "value" in config else view.get(tuple(config["value_from"].split(".")))
    if value is EventView.MISSING:
        return f"{config['value_from']} is absent from the event"
    if event.subject is None:
        return "the event has no subject to update"
    key = (event.tenant, event.mode, event.subject)
    batch.profiles.setdefault(key, {})[config["attribute"]] = value
    batch.changed_profiles[key] = at
    return None


def _dispatch(batch: _Batch, m: _Match, trigger: CompiledTrigger, action: ActionRecord) -> ActionRecord:
    """Carry out a new action's effects; the action with its outcome."""
    event, scope, config = m.event, m.scope, trigger.action_config
    status: ActionStatus = "dispatched"
    error: str | None = None
    result: bytes | None = None
    at = action.created_at
    topic = f"action.{action.type}"
    if action.type == "webhook":
        target = config["endpoint_id"]
        if target in scope.endpoints:
            body = message(topic, at, action=action, event=event)
            result = _encode({"deliveries": _deliver(batch, event, "action.webhook", action.id, body, at, [target])})
        else:
            status, error = "failed", f"no enabled webhook endpoint {target!r}"
    else:
        if action.type == "journey_enroll":
            outcome = _enroll(batch, event, config["journeyId"], config.get("mode", "skip_if_active"), action.id, at)
            result = _encode({"enrollment": outcome})
            if outcome == "skipped":
                status = "skipped"
        elif action.type in ("award_badge", "award_points"):
            status, error, result = dispatch_award(
                batch.awards, event, action.type, config, action.id, trigger.id, at, scope.badges, scope.settings
            )
        elif action.type == "update_attribute":
            assert m.view is not None
            error = _set_attribute(batch, event, config, m.view, at)
            if error is not None:
                status = "failed"
        subscribers = scope.subscribers(topic) if status == "dispatched" else []
        if subscribers:
            _deliver(batch, event, topic, action.id, message(topic, at, action=action, event=event), at, subscribers)
    if (status, error, result) == ("dispatched", None, None):
        return action
    return msgspec.structs.replace(
        action, status=status, error=error, result=None if result is None else msgspec.Raw(result)
    )


def _fire(batch: _Batch, m: _Match, now: datetime) -> None:
    event, view = m.event, m.view
    subject = event.subject or ""
    for trigger in m.triggers:
        assert view is not None, "a trigger matched, so the event's data was read"
        act = action_id(trigger.id, event.id)
        if trigger.window is not None and not _crosses_window(batch, trigger, view, subject):
            continue
        if trigger.cooldown_us is not None and _cooling_down(batch, trigger, event, subject, act):
            continue
        if act in batch.existing:
            continue  # applied before (a checkpoint that went back): nothing fires twice
        action = ActionRecord(
            id=act,
            tenant=event.tenant,
            mode=event.mode,
            trigger_id=trigger.id,
            trigger_name=trigger.name,
            event_id=event.id,
            event_type=event.type,
            subject=event.subject,
            type=trigger.action_type,
            config=msgspec.Raw(_encode(trigger.action_config)),
            status="dispatched",
            priority=trigger.priority,
            event_time=event.time,
            created_at=now,
        )
        action = _dispatch(batch, m, trigger, action)
        batch.existing.add(act)
        batch.effects.actions.append(action)
        if action.status != "failed" and trigger.cooldown_us is not None:
            batch.firings[trigger.id, subject].append((to_us(event.time), act))


async def plan_triggers(
    events: Sequence[Event],
    scopes: dict[Scope, ScopeDefinitions],
    state: StateReads,
    now: datetime | None = None,
) -> Effects:
    """The effects of applying triggers (and event subscriptions) to `events`, in log order.
    Actions are stamped `now`, or (a replay, which must not read the clock) each with its
    event's receive time."""
    effects = Effects()
    matches = await _match(events, scopes)
    if not matches:
        return effects
    batch = _Batch(effects)
    await _read(state, matches, batch)
    for i, m in enumerate(matches):
        await pace(i)
        at = now or m.event.received_at
        _fire(batch, m, at)
        topic = f"event.{m.event.type}"
        subscribers = m.scope.subscribers(topic)
        if subscribers:
            body = message(topic, at, event=m.event)
            _deliver(batch, m.event, topic, m.event.id, body, at, subscribers)
    for (trigger_id, subject), window in batch.windows.items():
        window.changes(trigger_id, subject, effects)
    for key, at in batch.changed_profiles.items():
        effects.profiles.append(ProfileWrite(*key, batch.profiles[key], at))
    return effects
