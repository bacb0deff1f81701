"""Evaluating triggers on events and dispatching their actions.

`apply_triggers` runs inside one store write (see `Store.process`): window points,
firings, action records and webhook outbox rows are written together with the
consumer's checkpoint. Action ids derive from (trigger, event), so applying the same
events twice fires nothing twice.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from headwater.clock import to_us
from headwater.events import Event, Mode
from headwater.processing.conditions import EventView
from headwater.processing.rules import (
    DEFAULT_TYPE_MAPPINGS,
    CompiledTrigger,
    TriggerIn,
    TriggerSet,
    compile_trigger,
)
from headwater.storage.base import Store
from headwater.storage.derived import ActionRecord, ProcessingState, topic_matches

Scope = tuple[str, Mode]
_decode_rule = msgspec.json.Decoder(TriggerIn)
_encode = msgspec.json.encode


def action_id(trigger_id: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{trigger_id}\x00{event_id}".encode()).hexdigest()
    return f"act_{digest[:32]}"


class WebhookMessage(msgspec.Struct):
    """The body of every webhook Headwater sends, in the Standard Webhooks shape."""

    type: str
    timestamp: datetime
    data: dict[str, Any]


class TriggerLoader:
    """Compiled trigger sets per tenant and mode, reloaded when any process changes a trigger."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sets: dict[Scope, TriggerSet] = {}
        self._version = -1

    def invalidate(self) -> None:
        self._sets.clear()

    async def sets_for(self, scopes: Iterable[Scope]) -> dict[Scope, TriggerSet]:
        # Read the version before loading: a change committed during the load bumps it
        # past what we hold, and the next call reloads.
        version = await self.store.triggers_version()
        if version != self._version:
            self._sets.clear()
            self._version = version
        for scope in scopes:
            if scope not in self._sets:
                self._sets[scope] = await self._load(*scope)
        return self._sets

    async def _load(self, tenant: str, mode: Mode) -> TriggerSet:
        records = await self.store.list_triggers(tenant, mode)
        compiled = [compile_trigger(r.id, _decode_rule.decode(r.definition), order) for order, r in enumerate(records)]
        mappings = await self.store.get_type_mappings(tenant, mode)
        return TriggerSet(compiled, DEFAULT_TYPE_MAPPINGS if mappings is None else mappings)


def _crosses_window(state: ProcessingState, trigger: CompiledTrigger, view: EventView, subject: str) -> bool:
    """Fire when the rolling total first reaches the threshold: before < threshold <= after."""
    window = trigger.window
    assert window is not None
    value = 1.0
    if window.sum_field is not None:
        raw = view.get(window.sum_field)
        if not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw):
            return False
        value = float(raw)
    event = view.event
    at = to_us(event.time)
    state.window_add(trigger.id, subject, event.id, at, value)
    count, total = state.window_totals(trigger.id, subject, at - window.within_us, at)
    after = float(count) if window.sum_field is None else total
    before = after - value
    # Points older than two windows can no longer count for any event still arriving in order.
    state.window_prune(trigger.id, subject, at - 2 * window.within_us)
    return before < window.threshold <= after


def _cooling_down(state: ProcessingState, trigger: CompiledTrigger, event: Event, subject: str, act: str) -> bool:
    assert trigger.cooldown_us is not None
    at = to_us(event.time)
    last = state.last_firing(trigger.id, subject, at, act)
    return last is not None and at - last < trigger.cooldown_us


def _subscribed(patterns: frozenset[str], topic: str) -> bool:
    return any(topic_matches(pattern, topic) for pattern in patterns)


def _message(topic: str, at: datetime, **data: Any) -> bytes:
    return _encode(WebhookMessage(topic, at, data))


def _dispatch(
    state: ProcessingState, trigger: CompiledTrigger, view: EventView, action: ActionRecord, patterns: frozenset[str]
) -> None:
    """Carry out a new action's effects and settle its status."""
    event = view.event
    config = trigger.action_config
    status, error, result = "dispatched", None, None
    topic = f"action.{action.type}"
    if action.type == "webhook":
        message = _message(topic, action.created_at, action=action, event=event)
        try:
            ids = state.enqueue_deliveries(
                event.tenant, event.mode, "action.webhook", action.id, message, action.created_at, config["endpoint_id"]
            )
            result = _encode({"deliveries": ids})
        except LookupError:
            status, error = "failed", f"no enabled webhook endpoint {config['endpoint_id']!r}"
    else:
        if action.type == "journey_enroll":
            outcome = state.enroll(
                event.tenant,
                event.mode,
                config["journeyId"],
                event.subject or "",
                action.id,
                config.get("mode", "skip_if_active"),
                action.created_at,
            )
            result = _encode({"enrollment": outcome})
            if outcome == "skipped":
                status = "skipped"
        elif action.type == "update_attribute":
            value = config["value"] if "value" in config else view.get(tuple(config["value_from"].split(".")))
            if value is EventView.MISSING:
                status, error = "failed", f"{config['value_from']} is absent from the event"
            elif event.subject is None:
                status, error = "failed", "the event has no subject to update"
            else:
                state.set_attribute(
                    event.tenant, event.mode, event.subject, config["attribute"], value, action.created_at
                )
        if status == "dispatched" and _subscribed(patterns, topic):
            message = _message(topic, action.created_at, action=action, event=event)
            state.enqueue_deliveries(event.tenant, event.mode, topic, action.id, message, action.created_at)
    if (status, error, result) != ("dispatched", None, None):
        state.settle_action(action.id, status, error, result)  # type: ignore[arg-type]


def fire(
    state: ProcessingState, trigger_set: TriggerSet, event: Event, now: datetime, patterns: frozenset[str]
) -> list[ActionRecord]:
    """Evaluate one event against its tenant's triggers; returns the actions it newly fired.
    `patterns` are the webhook subscriptions of the event's tenant and mode."""
    triggers = trigger_set.for_event_type(event.type)
    if not triggers:
        return []
    view = EventView(event)
    fired: list[ActionRecord] = []
    subject = event.subject or ""
    for trigger in triggers:
        if not trigger.matches(view):
            continue
        act = action_id(trigger.id, event.id)
        if trigger.window is not None and not _crosses_window(state, trigger, view, subject):
            continue
        if trigger.cooldown_us is not None and _cooling_down(state, trigger, event, subject, act):
            continue
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
        if state.record_action(action):
            _dispatch(state, trigger, view, action, patterns)
            fired.append(action)
    return fired


def apply_triggers(
    state: ProcessingState, events: Sequence[Event], sets: dict[Scope, TriggerSet], now: datetime
) -> None:
    """Apply triggers (and event subscriptions) to a batch of events, in log order."""
    subscriptions: dict[Scope, frozenset[str]] = {}
    for event in events:
        scope = (event.tenant, event.mode)
        patterns = subscriptions.get(scope)
        if patterns is None:
            patterns = subscriptions[scope] = frozenset(state.subscriptions(*scope))
        trigger_set = sets.get(scope)
        if trigger_set:
            fire(state, trigger_set, event, now, patterns)
        topic = f"event.{event.type}"
        if patterns and _subscribed(patterns, topic):
            state.enqueue_deliveries(event.tenant, event.mode, topic, event.id, _message(topic, now, event=event), now)
