"""Poison events through the API: an event whose processing raises (a trigger engine made to
raise on purpose for one event type, the test-only hook) is retried, then dead-lettered and
passed over; the events behind it, of the same subject and of others, are processed; the
dead letter is listed, retried while still poison (dead again, one attempt more) and, once
the cause is gone, retried into `resolved` with its effects applied."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.events import Event
from headwater.ids import dead_letter_id
from headwater.partitions import DEFAULT_PARTITIONS, partition_of
from headwater.processing.consumer import FactsEngine, TriggersEngine
from headwater.processing.definitions import Scope, ScopeDefinitions
from headwater.storage.derived import StateReads
from headwater.storage.effects import Effects
from tests.conftest import Api, WorkerThread


class PoisonedTriggers(TriggersEngine):
    """The trigger engine, except that it raises for events of type `poison` while `poisoned`."""

    poisoned = True

    async def plan(
        self,
        events: Sequence[Event],
        scopes: dict[Scope, ScopeDefinitions],
        state: StateReads,
        now: datetime | None,
        retry: bool = False,
    ) -> Effects:
        if self.poisoned and any(e.type == "poison" for e in events):
            raise RuntimeError("this rule raises on purpose")
        return await super().plan(events, scopes, state, now, retry)


@pytest.fixture
def poisoned() -> PoisonedTriggers:
    return PoisonedTriggers()


@pytest.fixture
def api(settings: Settings, poisoned: PoisonedTriggers) -> Iterator[Api]:
    with (
        WorkerThread(settings, engines=(FactsEngine(), poisoned)),
        TestClient(create_app(settings), raise_server_exceptions=False) as client,
    ):
        yield Api(client, settings)


def wait_for(api: Api, key: str, path: str, check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = api.client.get(path, headers=api.as_(key)).json()
        if check(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_a_poison_event_is_dead_lettered_and_the_rest_go_on(api: Api, poisoned: PoisonedTriggers) -> None:
    key, other = api.key(), api.key("other")
    for tenant_key in (key, other):
        rule = {"name": "all", "event_types": ["poison", "fine"], "action": {"type": "recommend", "config": {}}}
        assert api.client.post("/v1/triggers", json=rule, headers=api.as_(tenant_key)).status_code == 201
    events = [{"type": "fine", "subject": "s1"}, {"type": "poison", "subject": "s1"}, {"type": "fine", "subject": "s1"}]
    sent = api.client.post("/v1/events?wait=processed", json={"events": events}, headers=api.as_(key))
    assert sent.status_code == 200, sent.text
    fine_first, poison, fine_after = (r["id"] for r in sent.json()["results"])
    # The events around it fired; the poison event fired nothing (its effects were never written).
    assert [[a["event_id"] for a in r["actions"]] for r in sent.json()["results"]] == [[fine_first], [], [fine_after]]
    elsewhere = api.client.post(
        "/v1/events?wait=processed", json={"type": "fine", "subject": "s9"}, headers=api.as_(other)
    )
    assert len(elsewhere.json()["results"][0]["actions"]) == 1

    [dead] = api.client.get("/v1/dead-letters", headers=api.as_(key)).json()["data"]
    stored = api.client.get(f"/v1/events/{poison}", headers=api.as_(key)).json()
    assert dead == {
        "id": dead_letter_id("triggers", poison),
        "consumer": "triggers",
        "partition": partition_of("acme", "live", "s1", DEFAULT_PARTITIONS),
        "seq": stored["seq"],
        "event_id": poison,
        "tenant": "acme",
        "mode": "live",
        "event_type": "poison",
        "error": "RuntimeError: this rule raises on purpose",
        "attempts": 3,
        "status": "dead",
        "created_at": dead["created_at"],
        "updated_at": dead["created_at"],
    }
    assert api.client.get("/v1/dead-letters", headers=api.as_(other)).json() == {"data": [], "next_cursor": None}
    assert api.client.get(f"/v1/dead-letters/{dead['id']}", headers=api.as_(other)).status_code == 404
    assert api.client.get(f"/v1/dead-letters/{dead['id']}", headers=api.as_(key)).json() == dead

    # Retried while still poison: dead again, one attempt on.
    retried = api.client.post(f"/v1/dead-letters/{dead['id']}/retry", headers=api.as_(key))
    assert (retried.status_code, retried.json()["status"]) == (202, "retrying")
    again = wait_for(api, key, f"/v1/dead-letters/{dead['id']}", lambda d: d["status"] != "retrying")
    assert (again["status"], again["attempts"], again["error"]) == ("dead", 4, dead["error"])
    # The cause gone, retried: applied, and resolved.
    poisoned.poisoned = False
    assert api.client.post(f"/v1/dead-letters/{dead['id']}/retry", headers=api.as_(key)).status_code == 202
    resolved = wait_for(api, key, f"/v1/dead-letters/{dead['id']}", lambda d: d["status"] != "retrying")
    assert (resolved["status"], resolved["attempts"]) == ("resolved", 4)
    actions = api.client.get("/v1/actions", params={"event": poison}, headers=api.as_(key)).json()["data"]
    assert [(a["event_id"], a["status"]) for a in actions] == [(poison, "dispatched")]
    # A resolved dead letter is not retried again.
    refused = api.client.post(f"/v1/dead-letters/{dead['id']}/retry", headers=api.as_(key))
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "only a dead letter that is dead can be retried; this one is resolved",
        "details": [],
    }


def test_dead_letters_need_the_right_roles(api: Api) -> None:
    admin = api.key()
    viewer, ingest = api.key(role="viewer"), api.key(role="ingest")
    assert api.client.get("/v1/dead-letters", headers=api.as_(viewer)).status_code == 200
    assert api.client.get("/v1/dead-letters", headers=api.as_(ingest)).status_code == 403
    assert api.client.post("/v1/dead-letters/dlq_x/retry", headers=api.as_(viewer)).status_code == 403
    missing = api.client.post("/v1/dead-letters/dlq_x/retry", headers=api.as_(admin))
    assert (missing.status_code, missing.json()) == (404, {"error": "no such dead letter", "details": []})
    bad = api.client.get("/v1/dead-letters", params={"cursor": "x"}, headers=api.as_(admin))
    assert bad.status_code == 400
