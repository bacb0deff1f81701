"""Evaluating triggers on events and dispatching their actions.

`apply_triggers` runs inside one store write (see `Store.process`): window points,
firings, action records and webhook outbox rows are written together with the
consumer's checkpoint. Action ids derive from (trigger, event), so applying the same
events twice fires nothing twice.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from headwater.clock import to_us
from headwater.events import Event, Mode
from headwater.parsing import is_number
from headwater.processing.awards import dispatch_award
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


class Routing(NamedTuple):
    """What a tenant and mode's events can cause: trigger rules and webhook subscriptions."""

    triggers: TriggerSet
    subscriptions: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.triggers) or bool(self.subscriptions)


class TriggerLoader:
    """Routing per tenant and mode, cached.

    Changes made through this process's API call `invalidate` and take effect at once.
    Changes by another process are seen within `recheck_seconds` (a trigger version
    counter in the store), and everything is reloaded every `reload_seconds` regardless.
    """

    def __init__(self, store: Store, recheck_seconds: float = 1.0, reload_seconds: float = 10.0) -> None:
        self.store = store
        self.recheck_seconds = recheck_seconds
        self.reload_seconds = reload_seconds
        self._routes: dict[Scope, Routing] = {}
        self._generation = 0  # bumped by invalidate, so a load racing a change is not kept
        self._version = -1
        self._checked_at = -math.inf
        self._loaded_at = -math.inf

    def invalidate(self) -> None:
        self._generation += 1
        self._routes.clear()

    async def _recheck(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at > self.reload_seconds:
            self.invalidate()
            self._loaded_at = now
        if now - self._checked_at > self.recheck_seconds:
            self._checked_at = now
            version = await self.store.triggers_version()
            if version != self._version:
                self.invalidate()
                self._version = version

    async def routes_for(self, scopes: Iterable[Scope]) -> dict[Scope, Routing]:
        await self._recheck()
        found: dict[Scope, Routing] = {}
        for scope in scopes:
            routing = self._routes.get(scope)
            while routing is None:
                generation = self._generation
                loaded = await self._load(*scope)
                if generation == self._generation:
                    routing = self._routes[scope] = loaded
            found[scope] = routing
        return found

    async def _load(self, tenant: str, mode: Mode) -> Routing:
        records = await self.store.list_triggers(tenant, mode)
        compiled = [compile_trigger(r.id, _decode_rule.decode(r.definition), order) for order, r in enumerate(records)]
        mappings = await self.store.get_type_mappings(tenant, mode)
        subscriptions = await self.store.webhook_subscriptions(tenant, mode)
        return Routing(
            TriggerSet(compiled, DEFAULT_TYPE_MAPPINGS if mappings is None else mappings), frozenset(subscriptions)
        )


def _crosses_window(state: ProcessingState, trigger: CompiledTrigger, view: EventView, subject: str) -> bool:
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
        elif action.type in ("award_badge", "award_points"):
            status, error, result = dispatch_award(
                state, event, action.type, config, action.id, trigger.id, action.created_at
            )
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
    state: ProcessingState, events: Sequence[Event], routes: dict[Scope, Routing], now: datetime
) -> None:
    """Apply triggers (and event subscriptions) to a batch of events, in log order."""
    for event in events:
        routing = routes.get((event.tenant, event.mode))
        if not routing:
            continue
        patterns = routing.subscriptions
        if routing.triggers:
            fire(state, routing.triggers, event, now, patterns)
        topic = f"event.{event.type}"
        if patterns and _subscribed(patterns, topic):
            state.enqueue_deliveries(event.tenant, event.mode, topic, event.id, _message(topic, now, event=event), now)
