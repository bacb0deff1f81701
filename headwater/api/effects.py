"""`GET /v1/events/{event_id}/effects`: one event and what processing made of it.

What it caused is read from where processing wrote it: the event's fact once the facts consumer
has passed it, the actions its triggers fired (one per firing), and the webhook deliveries of
the event and of those actions. A delivery's id derives from its endpoint and its message key
(the event's or the action's id), so the deliveries are looked up by id, endpoint by endpoint:
no index of the outbox by event is needed.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.api.common import authorize, json_response
from headwater.errors import ApiError
from headwater.events import Event
from headwater.ids import delivery_id
from headwater.partitions import partition_of
from headwater.processing.consumer import FactsEngine
from headwater.processing.facts import make_fact
from headwater.processing.waiting import CONSUMERS
from headwater.services import Services
from headwater.storage.records import ActionQuery, ActionRecord, Delivery

MAX_ACTIONS = 1000
FACTS = FactsEngine.name  # the consumer that makes an event's fact


class FactOut(msgspec.Struct):
    fact_id: str
    fact_type: str
    participant_id: str | None
    occurred_at: datetime
    processed_at: datetime
    changes: msgspec.Raw | None  # what processing the fact changed (progress, awards), when anything


class Firing(msgspec.Struct):
    trigger_id: str
    trigger_name: str
    action_id: str
    action_type: str
    status: str


class EventEffects(msgspec.Struct):
    """`processed`: every consumer of the event's partition has passed it. Until then the lists
    hold what is written so far (nothing, as a consumer writes a batch at once)."""

    event: Event
    processed: bool
    facts: list[FactOut]
    firings: list[Firing]
    actions: list[ActionRecord]
    deliveries: list[Delivery]


def routes(services: Services) -> list[BaseRoute]:
    store = services.store

    async def effects(request: Request) -> Response:
        principal = await authorize(services, request, "read")
        event = await store.log.get_event(principal.tenant, principal.mode, request.path_params["event_id"])
        if event is None:
            raise ApiError(404, "no such event")
        seq = event.seq or 0
        partition = partition_of(event.tenant, event.mode, event.subject, store.log.partitions)
        passed = {c: await store.derived.checkpoint(c, partition) >= seq for c in CONSUMERS}
        facts = []
        if passed[FACTS]:
            fact = make_fact(event)
            raw = await store.derived.fact_effects(event.tenant, event.mode, event.subject, fact.fact_id)
            changes = None if raw is None else msgspec.Raw(raw)
            facts.append(
                FactOut(fact.fact_id, fact.fact_type, fact.participant_id, fact.occurred_at, fact.processed_at, changes)
            )
        rows = await store.derived.list_actions(
            ActionQuery(principal.tenant, principal.mode, event_id=event.id, limit=MAX_ACTIONS)
        )
        # Newest first from the store; shown in the order they were evaluated: priority, then age.
        actions = sorted((a for _, a in reversed(rows)), key=lambda a: -a.priority)
        firings = [Firing(a.trigger_id, a.trigger_name, a.id, a.type, a.status) for a in actions]
        endpoints = await store.registry.list_webhooks(principal.tenant, principal.mode)
        deliveries = []
        for key in (event.id, *(a.id for a in actions)):
            for endpoint in endpoints:
                found = await store.derived.get_delivery(
                    principal.tenant, principal.mode, delivery_id(endpoint.id, key)
                )
                if found is not None:
                    deliveries.append(found)
        return json_response(EventEffects(event, all(passed.values()), facts, firings, actions, deliveries))

    return [Route("/v1/events/{event_id}/effects", effects, methods=["GET"])]
