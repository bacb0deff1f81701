"""`/v1/webhooks` (endpoints, secret rotation, attempts, test sends) and `/v1/deliveries`
(the outbox: pending, delivered and dead-lettered messages, and re-sending them)."""

from __future__ import annotations

import base64
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api import audit
from headwater.api.common import authorize, int_param, json_response, position_cursor, read_json
from headwater.auth import Principal
from headwater.errors import ApiError, bad_request
from headwater.events import Mode
from headwater.ids import delivery_id, new_prefixed_id
from headwater.processing.triggers import WebhookMessage
from headwater.processing.webhooks import check_url
from headwater.sealing import Sealer
from headwater.services import Services
from headwater.storage.effects import NewDelivery
from headwater.storage.records import Delivery, DeliveryAttempt, DeliveryQuery, DeliveryStatus
from headwater.storage.registry import MAX_LIVE_SECRETS, WebhookEndpoint

MAX_SUBSCRIPTIONS = 100
# `namespace.name` (names may hold dots, e.g. `event.outcome.recorded`) or `namespace.*`.
TOPIC = re.compile(r"^[a-z][a-z0-9_]*\.(\*|[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199})$")
TEST_TOPIC = "webhook.test"
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "delivered", "failed")

Description = Annotated[str, msgspec.Meta(max_length=500)]
# May be empty: an endpoint that only a trigger's `webhook` action names needs no topic.
Subscriptions = Annotated[list[str], msgspec.Meta(max_length=MAX_SUBSCRIPTIONS)]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    subscriptions: Subscriptions = msgspec.field(default_factory=list)
    description: Description | None = None
    enabled: bool = True


class WebhookPatch(msgspec.Struct, forbid_unknown_fields=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    subscriptions: Subscriptions | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class WebhookOut(msgspec.Struct):
    id: str
    url: str
    description: str | None
    subscriptions: list[str]
    mode: Mode
    enabled: bool
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(WebhookOut, kw_only=True):
    """The only responses that show a secret: creation and rotation."""

    secret: str


class WebhookList(msgspec.Struct):
    data: list[WebhookOut]


class AttemptPage(msgspec.Struct):
    data: list[DeliveryAttempt]
    next_cursor: str | None


class DeliveryOut(msgspec.Struct):
    id: str
    endpoint_id: str
    topic: str
    message_key: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: msgspec.Raw


class DeliveryPage(msgspec.Struct):
    data: list[DeliveryOut]
    next_cursor: str | None


def new_secret() -> str:
    """`whsec_` and 32 random bytes in base64, the form Standard Webhooks libraries read."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _out(endpoint: WebhookEndpoint) -> WebhookOut:
    now = _now()
    # When the last of the rotated-out secrets still signing stops.
    expiries = [p.expires_at for p in endpoint.previous_secrets if p.expires_at > now]
    return WebhookOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        subscriptions=endpoint.subscriptions,
        mode=endpoint.mode,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        previous_secret_expires_at=max(expiries, default=None),
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> WebhookWithSecret:
    """The endpoint with its new secret in clear (the stored one may be sealed)."""
    return WebhookWithSecret(**msgspec.structs.asdict(_out(endpoint)), secret=secret)


def _delivery_out(delivery: Delivery) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        topic=delivery.topic,
        message_key=delivery.message_key,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        payload=delivery.payload,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.settings = services.settings
        self.sealer = Sealer(services.settings.secret_key)

    def valid_url(self, url: str) -> str:
        problem = check_url(url, self.settings.allow_private_webhooks)
        if problem is not None:
            if check_url(url, allow_private=True) is None:
                # Refused only by the SSRF guard: say how a local set-up lifts it.
                problem += (
                    "; start the server with HEADWATER_ALLOW_PRIVATE_WEBHOOKS=1 to allow private addresses"
                    " (local development)"
                )
            raise bad_request(problem, "url", "invalid_url")
        return url

    @staticmethod
    def valid_subscriptions(subscriptions: list[str]) -> list[str]:
        for index, topic in enumerate(subscriptions):
            if not TOPIC.match(topic):
                raise bad_request(
                    f"{topic!r} is not a topic such as action.recommend, event.purchase or action.*",
                    f"subscriptions.{index}",
                    "invalid",
                )
        return list(dict.fromkeys(subscriptions))

    async def found(self, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        endpoint = await self.store.registry.get_webhook(principal.tenant, principal.mode, endpoint_id)
        if endpoint is None:
            raise ApiError(404, "no such webhook endpoint")
        return endpoint

    async def create(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        body: WebhookCreate = await read_json(request, WebhookCreate)
        now = _now()
        endpoint_id, secret = new_prefixed_id("whe"), new_secret()
        endpoint = WebhookEndpoint(
            id=endpoint_id,
            tenant=principal.tenant,
            mode=principal.mode,
            url=self.valid_url(body.url),
            description=body.description,
            subscriptions=self.valid_subscriptions(body.subscriptions),
            secret=self.sealer.seal(endpoint_id, secret),
            previous_secrets=[],
            enabled=body.enabled,
            disabled_reason=None if body.enabled else "disabled through the API",
            created_at=now,
            updated_at=now,
        )
        await self.store.registry.create_webhook(endpoint)
        await audit.record(self.services, principal, "webhook.create", endpoint.id, enabled=endpoint.enabled)
        return json_response(_with_secret(endpoint, secret), status=201)

    async def list_all(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        endpoints = await self.store.registry.list_webhooks(principal.tenant, principal.mode)
        return json_response(WebhookList([_out(e) for e in endpoints]))

    async def get_one(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        return json_response(_out(await self.found(principal, request.path_params["endpoint_id"])))

    async def patch(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        endpoint = await self.found(principal, request.path_params["endpoint_id"])
        body: WebhookPatch = await read_json(request, WebhookPatch)
        changes: dict[str, object] = {"updated_at": _now()}
        if not isinstance(body.url, msgspec.UnsetType):
            changes["url"] = self.valid_url(body.url)
        if not isinstance(body.subscriptions, msgspec.UnsetType):
            changes["subscriptions"] = self.valid_subscriptions(body.subscriptions)
        if not isinstance(body.description, msgspec.UnsetType):
            changes["description"] = body.description
        if not isinstance(body.enabled, msgspec.UnsetType) and body.enabled != endpoint.enabled:
            changes["enabled"] = body.enabled
            changes["disabled_reason"] = None if body.enabled else "disabled through the API"
        updated = msgspec.structs.replace(endpoint, **changes)
        if not await self.store.registry.update_webhook(updated):
            raise ApiError(404, "no such webhook endpoint")
        if endpoint.enabled and not updated.enabled:
            await self.store.derived.fail_pending(updated.id, updated.disabled_reason or "disabled")
        await audit.record(self.services, principal, "webhook.update", updated.id, enabled=updated.enabled)
        return json_response(_out(updated))

    async def delete(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        endpoint = await self.found(principal, request.path_params["endpoint_id"])
        if not await self.store.registry.delete_webhook(principal.tenant, principal.mode, endpoint.id):
            raise ApiError(404, "no such webhook endpoint")
        await self.store.derived.forget_endpoint(endpoint.id)
        await audit.record(self.services, principal, "webhook.delete", endpoint.id)
        return json_response(_out(endpoint))

    async def rotate(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        now = _now()
        grace_until = now + timedelta(seconds=self.settings.webhook_rotation_grace)
        endpoint_id, secret = request.path_params["endpoint_id"], new_secret()
        rotated = await self.store.registry.rotate_webhook_secret(
            principal.tenant, principal.mode, endpoint_id, self.sealer.seal(endpoint_id, secret), grace_until, now
        )
        if rotated is None:
            raise ApiError(404, "no such webhook endpoint")
        if rotated == "too_many":
            raise ApiError(
                409,
                f"{MAX_LIVE_SECRETS} secrets of this endpoint would sign every message: rotate again once the"
                " oldest rotated-out one has expired",
            )
        await audit.record(self.services, principal, "webhook.rotate", rotated.id)
        return json_response(_with_secret(rotated, secret))

    async def send_test(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        endpoint = await self.found(principal, request.path_params["endpoint_id"])
        if not endpoint.enabled:
            raise ApiError(409, "the webhook endpoint is disabled")
        now = _now()
        message_key = new_prefixed_id("test")
        payload = msgspec.json.encode(WebhookMessage(TEST_TOPIC, now, {"endpoint_id": endpoint.id}))
        test = NewDelivery(
            delivery_id(endpoint.id, message_key), principal.tenant, principal.mode, endpoint.id, TEST_TOPIC,
            message_key, payload, now,
        )  # fmt: skip
        await self.store.derived.enqueue([test])
        # The message as queued: a read-back races the delivery worker, which may have claimed
        # (moved its next attempt) or even sent it by then.
        queued = Delivery(
            test.id, test.tenant, test.mode, test.endpoint_id, test.topic, test.message_key, msgspec.Raw(payload),
            "pending", 0, now, None, None, now, None,
        )  # fmt: skip
        return json_response(_delivery_out(queued), status=202)

    async def attempts(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        endpoint = await self.found(principal, request.path_params["endpoint_id"])
        limit = int_param(request, "limit", 100, 1, 1000)
        rows = await self.store.derived.list_webhook_attempts(endpoint.id, position_cursor(request), limit + 1)
        page = rows[:limit]
        return json_response(AttemptPage([a for _, a in page], str(page[-1][0]) if len(rows) > limit else None))

    async def deliveries(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        status = request.query_params.get("status")
        if status is not None and status not in DELIVERY_STATUSES:
            raise bad_request("status must be pending, delivered or failed", "status", "invalid")
        limit = int_param(request, "limit", 100, 1, 1000)
        query = DeliveryQuery(
            principal.tenant,
            principal.mode,
            status=status,
            endpoint_id=request.query_params.get("endpoint_id"),
            before=position_cursor(request),
            limit=limit + 1,
        )
        rows = await self.store.derived.list_deliveries(query)
        page = rows[:limit]
        return json_response(
            DeliveryPage([_delivery_out(d) for _, d in page], str(page[-1][0]) if len(rows) > limit else None)
        )

    async def delivery(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "read")
        delivery = await self.store.derived.get_delivery(
            principal.tenant, principal.mode, request.path_params["delivery_id"]
        )
        if delivery is None:
            raise ApiError(404, "no such delivery")
        return json_response(_delivery_out(delivery))

    async def retry(self, request: Request) -> Response:
        principal = await authorize(self.services, request, "configure")
        delivery_id = request.path_params["delivery_id"]
        delivery = await self.store.derived.get_delivery(principal.tenant, principal.mode, delivery_id)
        if delivery is None:
            raise ApiError(404, "no such delivery")
        if delivery.status != "failed":
            raise ApiError(409, f"only a failed delivery can be retried; this one is {delivery.status}")
        endpoint = await self.store.registry.get_webhook(principal.tenant, principal.mode, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            raise ApiError(409, "the delivery's webhook endpoint is disabled: enable it first")
        retried = await self.store.derived.retry_delivery(principal.tenant, principal.mode, delivery_id, _now())
        if retried is None:
            raise ApiError(409, "only a failed delivery can be retried")
        return json_response(_delivery_out(retried), status=202)


def routes(services: Services) -> list[BaseRoute]:
    r = WebhookRoutes(services)
    return [
        Route("/v1/webhooks", r.create, methods=["POST"]),
        Route("/v1/webhooks", r.list_all, methods=["GET"]),
        Route("/v1/webhooks/{endpoint_id}", r.get_one, methods=["GET"]),
        Route("/v1/webhooks/{endpoint_id}", r.patch, methods=["PATCH"]),
        Route("/v1/webhooks/{endpoint_id}", r.delete, methods=["DELETE"]),
        Route("/v1/webhooks/{endpoint_id}/rotate", r.rotate, methods=["POST"]),
        Route("/v1/webhooks/{endpoint_id}/test", r.send_test, methods=["POST"]),
        Route("/v1/webhooks/{endpoint_id}/attempts", r.attempts, methods=["GET"]),
        Route("/v1/deliveries", r.deliveries, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id}", r.delivery, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id}/retry", r.retry, methods=["POST"]),
    ]
