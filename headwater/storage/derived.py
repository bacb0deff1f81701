"""The contract for state derived from the log: triggers, actions and what actions touch.

Consumers read the log by offset and apply each batch through `Store.process`, which
runs their function inside one atomic write together with their checkpoint. Every
effect has a deterministic id, so a batch applied twice (after a crash, or once by
the sync path and again by the consumer) changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from headwater.events import Mode
from headwater.storage.gamification import GamificationState

T = TypeVar("T")
ActionStatus = Literal["dispatched", "skipped", "failed"]


def topic_matches(subscription: str, topic: str) -> bool:
    """`action.recommend` matches only itself; `action.*` matches every `action.` topic."""
    if subscription.endswith(".*"):
        return topic.startswith(subscription[:-1])
    return subscription == topic


class TriggerRecord(msgspec.Struct, frozen=True):
    """A trigger as stored; `definition` is the validated rule as the client wrote it."""

    id: str
    tenant: str
    mode: Mode
    definition: msgspec.Raw
    created_at: datetime
    updated_at: datetime


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
    before: int | None = None  # position of the last row of the previous page
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


class ProcessingState(GamificationState, Protocol):
    """Synchronous operations on derived state, all inside one atomic write (the facts and
    gamification ones are in `headwater.storage.gamification`)."""

    def checkpoint(self, consumer: str) -> int: ...

    def set_checkpoint(self, consumer: str, seq: int) -> None: ...

    def window_add(self, trigger_id: str, subject: str, event_id: str, at_us: int, value: float) -> None:
        """Record one event in a trigger's rolling window for a subject (idempotent per event)."""

    def window_totals(self, trigger_id: str, subject: str, start_us: int, end_us: int) -> tuple[int, float]:
        """(count, sum) of the window points with start < time <= end."""

    def window_prune(self, trigger_id: str, subject: str, before_us: int) -> None: ...

    def last_firing(self, trigger_id: str, subject: str, at_or_before_us: int, excluding: str) -> int | None:
        """Event time of the latest other firing of the trigger for the subject up to a time."""

    def record_action(self, action: ActionRecord) -> bool:
        """Store the action; False (and nothing written) when its id already exists."""

    def settle_action(self, action_id: str, status: ActionStatus, error: str | None, result: bytes | None) -> None:
        """Set the outcome of an action's effects."""

    def enroll(
        self, tenant: str, mode: Mode, journey_id: str, subject: str, action_id: str, how: str, at: datetime
    ) -> str:
        """Enrol per `how` (skip_if_active | restart | allow_multiple); returns enrolled | skipped | restarted."""

    def set_attribute(self, tenant: str, mode: Mode, subject: str, name: str, value: Any, at: datetime) -> None: ...

    def enqueue_deliveries(
        self,
        tenant: str,
        mode: Mode,
        topic: str,
        message_key: str,
        payload: bytes,
        at: datetime,
        endpoint_id: str | None = None,
    ) -> list[str]:
        """Put a webhook message in the outbox for every enabled endpoint of the tenant and mode
        subscribed to `topic` (or only `endpoint_id`, whatever it subscribes to). Delivery ids
        derive from (endpoint, message_key), so enqueuing twice sends once. Returns the ids;
        raises `LookupError` when `endpoint_id` names no enabled endpoint."""


class TriggerStore(Protocol):
    async def process(self, fn: Callable[[ProcessingState], T], size: int = 1) -> T:
        """Run `fn` against the derived state inside one durable write."""

    async def put_trigger(self, record: TriggerRecord) -> None:
        """Create or replace a trigger."""

    async def get_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> TriggerRecord | None: ...

    async def list_triggers(self, tenant: str, mode: Mode) -> list[TriggerRecord]: ...

    async def delete_trigger(self, tenant: str, mode: Mode, trigger_id: str) -> bool: ...

    async def triggers_version(self) -> int:
        """A counter bumped by every change to any trigger or type mapping (any tenant)."""

    async def get_type_mappings(self, tenant: str, mode: Mode) -> dict[str, list[str]] | None:
        """The tenant's own mapping, or None when it uses the defaults."""

    async def put_type_mappings(
        self, tenant: str, mode: Mode, mappings: dict[str, list[str]], at: datetime
    ) -> None: ...

    async def list_actions(self, query: ActionQuery) -> list[tuple[int, ActionRecord]]:
        """Newest first, each with its position for paging."""

    async def list_enrollments(self, tenant: str, mode: Mode, journey_id: str) -> list[Enrollment]: ...

    async def get_profile(self, tenant: str, mode: Mode, subject: str) -> SubjectProfile | None: ...


# Webhooks: endpoints, the delivery outbox and every attempt.

DeliveryStatus = Literal["pending", "delivered", "failed"]


class WebhookEndpoint(msgspec.Struct, frozen=True):
    """A receiver of signed webhook messages. `subscriptions` are topics such as
    `action.recommend` or `event.purchase`, or a namespace wildcard such as `action.*`.
    `previous_secret` still signs until `previous_secret_expires_at` after a rotation."""

    id: str
    tenant: str
    mode: Mode
    url: str
    description: str | None
    subscriptions: list[str]
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


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
    before: int | None = None  # position of the last row of the previous page
    limit: int = 100


class DueDelivery(msgspec.Struct, frozen=True):
    """A claimed delivery with what the worker needs to send it."""

    id: str
    tenant: str
    mode: Mode
    endpoint_id: str
    topic: str
    payload: bytes
    attempts: int  # attempts made so far, in all
    round_attempts: int  # attempts made since it was (re-)queued: the index into the retry schedule
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None


class AttemptOutcome(msgspec.Struct, frozen=True):
    """What became of an attempt: the delivery's new status, when to try again, and
    whether the endpoint is now disabled (its other pending deliveries then fail too)."""

    attempt: DeliveryAttempt
    status: DeliveryStatus
    next_attempt_at: datetime | None = None
    disable_endpoint: str | None = None


class WebhookStore(Protocol):
    async def webhook_subscriptions(self, tenant: str, mode: Mode) -> set[str]:
        """Every topic pattern the enabled endpoints of the tenant and mode subscribe to."""

    async def create_webhook(self, endpoint: WebhookEndpoint) -> None: ...

    async def get_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> WebhookEndpoint | None: ...

    async def list_webhooks(self, tenant: str, mode: Mode) -> list[WebhookEndpoint]: ...

    async def update_webhook(self, endpoint: WebhookEndpoint) -> bool:
        """Store the endpoint's url, description, subscriptions, enabled, disabled_reason and
        updated_at. Disabling it fails its pending deliveries. False when it does not exist."""

    async def rotate_webhook_secret(
        self, tenant: str, mode: Mode, endpoint_id: str, secret: str, previous_expires_at: datetime, at: datetime
    ) -> WebhookEndpoint | None:
        """Make `secret` current; the current one becomes the previous until `previous_expires_at`."""

    async def delete_webhook(self, tenant: str, mode: Mode, endpoint_id: str) -> bool:
        """Delete the endpoint with its deliveries and attempts."""

    async def enqueue_webhook(
        self,
        tenant: str,
        mode: Mode,
        topic: str,
        message_key: str,
        payload: bytes,
        at: datetime,
        endpoint_id: str | None = None,
    ) -> list[str]:
        """`ProcessingState.enqueue_deliveries` in a write of its own."""

    async def get_delivery(self, tenant: str, mode: Mode, delivery_id: str) -> Delivery | None: ...

    async def list_deliveries(self, query: DeliveryQuery) -> list[tuple[int, Delivery]]:
        """Newest first, each with its position for paging."""

    async def retry_delivery(self, tenant: str, mode: Mode, delivery_id: str, at: datetime) -> Delivery | None:
        """Re-queue a failed delivery of an enabled endpoint for `at`, with a fresh retry
        schedule; None (and nothing changed) when there is no such delivery."""

    async def list_webhook_attempts(
        self, tenant: str, mode: Mode, endpoint_id: str, before: int | None = None, limit: int = 100
    ) -> list[tuple[int, DeliveryAttempt]]:
        """Newest first, each with its position for paging."""

    async def claim_deliveries(
        self, now: datetime, limit: int, lease_until: datetime, first_delay: float = 0.0
    ) -> list[DueDelivery]:
        """Take up to `limit` pending deliveries of enabled endpoints that are due at `now` (a
        first attempt only `first_delay` seconds after it was queued), and hide them from other
        claims until `lease_until`: a worker that dies mid-send leaves them to be sent again."""

    async def finish_attempt(self, outcome: AttemptOutcome) -> None:
        """Record the attempt and apply its outcome to the delivery (and the endpoint)."""
