"""Trigger rules through the HTTP API: CRUD, validation, firing, windows, cooldowns, mapping,
actions, journeys, profiles, dry runs, and exactly-once firing across consumer restarts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from headwater.processing.triggers import plan_triggers
from tests.conftest import Api, Carried, ServerProcess, run_cli
from tests.processing.replan import replan

UPSELL = {
    "name": "upsell after big purchase",
    "event_types": ["purchase"],
    "conditions": {
        "all": [
            {"field": "data.amount", "op": "gt", "value": 100},
            {"any": [{"field": "channel", "op": "in", "value": ["pos", "web"]}, {"field": "data.vip", "op": "exists"}]},
        ]
    },
    "priority": 10,
    "action": {"type": "recommend", "config": {"decisionFlowId": "df_upsell", "channel": "push"}},
}


def create(api: Api, key: str, rule: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post("/v1/triggers", json=rule, headers=api.as_(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def send(api: Api, key: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    """Ingest and wait until the triggers have run; returns the per-event results."""
    response = api.client.post("/v1/events?wait=processed", json={"events": list(events)}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def fired(results: list[dict[str, Any]]) -> list[list[str]]:
    return [[m["trigger_name"] for m in r["triggers_matched"]] for r in results]


def endpoint(api: Api, key: str) -> str:
    """A webhook endpoint that subscribes to nothing: only a `webhook` action reaches it."""
    response = api.client.post("/v1/webhooks", json={"url": "https://hooks.example.com/in"}, headers=api.as_(key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def hook(endpoint_id: str, name: str = "hook") -> dict[str, Any]:
    return {"name": name, "event_types": ["x"], "action": {"type": "webhook", "config": {"endpoint_id": endpoint_id}}}


def test_create_get_patch_delete(api: Api) -> None:
    key = api.key()
    created = create(api, key, UPSELL)
    trigger_id = created["id"]
    assert trigger_id.startswith("trg_")
    assert created == {
        **UPSELL,
        "id": trigger_id,
        "window": None,
        "cooldown": None,
        "enabled": True,
        "created_at": created["created_at"],
        "updated_at": created["updated_at"],
    }
    assert api.client.get(f"/v1/triggers/{trigger_id}", headers=api.as_(key)).json() == created
    assert api.client.get("/v1/triggers", headers=api.as_(key)).json() == {"data": [created]}

    patched = api.client.patch(
        f"/v1/triggers/{trigger_id}", json={"priority": 3, "cooldown": "1h"}, headers=api.as_(key)
    ).json()
    assert (patched["priority"], patched["cooldown"], patched["name"]) == (3, "1h", UPSELL["name"])
    bad = api.client.patch(f"/v1/triggers/{trigger_id}", json={"cooldown": "soon"}, headers=api.as_(key))
    assert bad.status_code == 400
    assert bad.json()["details"] == [
        {"field": "cooldown", "code": "invalid", "message": "a duration like 45s, 15m, 1h, 30d or 2w"}
    ]

    deleted = api.client.delete(f"/v1/triggers/{trigger_id}", headers=api.as_(key))
    assert deleted.status_code == 200
    gone = api.client.get(f"/v1/triggers/{trigger_id}", headers=api.as_(key))
    assert (gone.status_code, gone.json()) == (404, {"error": "no such trigger", "details": []})
    # Another tenant's trigger is invisible.
    other = create(api, key, UPSELL)["id"]
    assert api.client.get(f"/v1/triggers/{other}", headers=api.as_(api.key("b"))).status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"conditions": {"all": [{"field": "data.x", "op": "between", "value": 1}]}}, "conditions.all.0.op"),
        ({"conditions": {"any": [{"field": "amount", "op": "eq", "value": 1}]}}, "conditions.any.0.field"),
        ({"conditions": {"all": [{"field": "data.x", "op": "matches", "value": "(?<=x)"}]}}, "conditions.all.0.value"),
        ({"window": {"within": "30d"}}, "window"),
        ({"window": {"within": "30 days", "count_at_least": 3}}, "window.within"),
        ({"cooldown": "1y"}, "cooldown"),
        ({"event_types": []}, "event_types"),
        ({"action": {"type": "webhook", "config": {}}}, "action.config.endpoint_id"),
        ({"action": {"type": "journey_enroll", "config": {"journeyId": "j", "mode": "twice"}}}, "action.config.mode"),
        ({"action": {"type": "update_attribute", "config": {"attribute": "tier"}}}, "action.config"),
        ({"action": {"type": "launch"}}, "action.type"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_rules_name_the_bad_node(api: Api, change: dict[str, Any], field: str) -> None:
    key = api.key()
    response = api.client.post("/v1/triggers", json={**UPSELL, **change}, headers=api.as_(key))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid trigger"
    assert [d["field"] for d in body["details"]] == [field]
    assert api.client.get("/v1/triggers", headers=api.as_(key)).json() == {"data": []}


def test_roles(api: Api) -> None:
    for role, status in (("viewer", 403), ("ingest", 403), ("editor", 201)):
        response = api.client.post("/v1/triggers", json=UPSELL, headers=api.as_(api.key(role=role)))
        assert response.status_code == status


def test_fires_with_priority_order_and_records_actions(api: Api) -> None:
    key = api.key()
    upsell = create(api, key, UPSELL)
    low = create(api, key, {**UPSELL, "name": "low", "priority": 1, "conditions": None})
    results = send(
        api,
        key,
        {"type": "purchase", "subject": "c1", "channel": "pos", "data": {"amount": 150}},
        {"type": "purchase", "subject": "c2", "channel": "app", "data": {"amount": 150}},
        {"type": "page_view", "subject": "c1"},
    )
    assert fired(results) == [["upsell after big purchase", "low"], ["low"], []]
    action = results[0]["actions"][0]
    assert action == {
        "id": action["id"],
        "tenant": "acme",
        "mode": "live",
        "trigger_id": upsell["id"],
        "trigger_name": "upsell after big purchase",
        "event_id": results[0]["id"],
        "event_type": "purchase",
        "subject": "c1",
        "type": "recommend",
        "config": {"decisionFlowId": "df_upsell", "channel": "push"},
        "status": "dispatched",
        "priority": 10,
        "event_time": action["event_time"],
        "created_at": action["created_at"],
        "error": None,
        "result": None,
    }
    listed = api.client.get("/v1/actions", headers=api.as_(key)).json()
    assert len(listed["data"]) == 3
    assert {a["id"] for a in listed["data"]} == {a["id"] for r in results for a in r["actions"]}
    by_subject = api.client.get("/v1/actions", params={"subject": "c2"}, headers=api.as_(key)).json()["data"]
    assert [(a["subject"], a["trigger_id"]) for a in by_subject] == [("c2", low["id"])]
    firings = api.client.get(f"/v1/triggers/{upsell['id']}/firings", headers=api.as_(key)).json()
    assert [a["id"] for a in firings["data"]] == [action["id"]]
    # A repeat of the same event (by idempotency key) fires nothing new.
    again = send(api, key, {"type": "purchase", "subject": "c9", "idempotency_key": "k", "data": {"amount": 500}})
    repeat = send(api, key, {"type": "purchase", "subject": "c9", "idempotency_key": "k", "data": {"amount": 500}})
    assert repeat[0]["status"] == "duplicate"
    assert repeat[0]["actions"] == again[0]["actions"]
    assert len(api.client.get("/v1/actions", headers=api.as_(key)).json()["data"]) == 4


def test_type_mapping_defaults_and_edits(api: Api) -> None:
    key = api.key()
    create(api, key, {**UPSELL, "name": "outcome", "event_types": ["outcome.recorded"], "conditions": None})
    create(api, key, {**UPSELL, "name": "customer", "event_types": ["customer.updated"], "conditions": None})
    results = send(
        api, key, {"type": "purchase"}, {"type": "cart_abandon"}, {"type": "support_call"}, {"type": "app_open"}
    )
    assert fired(results) == [["outcome"], ["customer"], ["customer"], []]
    assert api.client.get("/v1/type-mappings", headers=api.as_(key)).json() == {
        "mappings": {
            "purchase": ["outcome.recorded"],
            "cart_abandon": ["customer.updated"],
            "support_call": ["customer.updated"],
        }
    }
    put = api.client.put(
        "/v1/type-mappings", json={"mappings": {"app_open": ["customer.updated"]}}, headers=api.as_(key)
    )
    assert put.status_code == 200
    assert fired(send(api, key, {"type": "purchase"}, {"type": "app_open"})) == [[], ["customer"]]


def test_count_window_fires_when_first_crossed(api: Api) -> None:
    key = api.key()
    create(api, key, {**UPSELL, "name": "third", "conditions": None, "window": {"count_at_least": 3, "within": "30d"}})

    def at(day: int, subject: str = "c1") -> dict[str, Any]:
        return {"type": "purchase", "subject": subject, "time": f"2026-01-{day:02d}T12:00:00Z"}

    results = send(api, key, at(1), at(2), at(3), at(4), at(3, "c2"))
    assert fired(results) == [[], [], ["third"], [], []]
    # Feb 20: Jan 1-3 have left the 30-day window, so only Feb 20 counts; Feb 21, 22 bring it back to 3.
    later = send(
        api,
        key,
        {**at(1), "time": "2026-02-20T12:00:00Z"},
        {**at(1), "time": "2026-02-21T12:00:00Z"},
        {**at(1), "time": "2026-02-22T12:00:00Z"},
    )
    assert fired(later) == [[], [], ["third"]]


def test_sum_window(api: Api) -> None:
    key = api.key()
    rule = {
        **UPSELL,
        "name": "big spender",
        "conditions": None,
        "window": {"sum_at_least": {"field": "data.amount", "value": 100}, "within": "7d"},
    }
    create(api, key, rule)
    results = send(
        api,
        key,
        {"type": "purchase", "subject": "c1", "time": "2026-03-01T00:00:00Z", "data": {"amount": 60}},
        {"type": "purchase", "subject": "c1", "time": "2026-03-02T00:00:00Z", "data": {"amount": "lots"}},
        {"type": "purchase", "subject": "c1", "time": "2026-03-03T00:00:00Z", "data": {"amount": 40}},
        {"type": "purchase", "subject": "c1", "time": "2026-03-04T00:00:00Z", "data": {"amount": 40}},
    )
    assert fired(results) == [[], [], ["big spender"], []]


def test_cooldown_per_subject(api: Api) -> None:
    key = api.key()
    create(api, key, {**UPSELL, "name": "cool", "conditions": None, "cooldown": "1h"})

    def at(minute: int, subject: str = "c1") -> dict[str, Any]:
        return {"type": "purchase", "subject": subject, "time": f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"}

    assert fired(send(api, key, at(0), at(30), at(30, "c2"), at(59), at(61), at(90))) == [
        ["cool"],
        [],
        ["cool"],
        [],
        ["cool"],
        [],
    ]


def test_journey_enrolment_modes(api: Api) -> None:
    key = api.key()
    for mode in ("skip_if_active", "restart", "allow_multiple"):
        create(
            api,
            key,
            {
                "name": mode,
                "event_types": [f"go_{mode}"],
                "action": {"type": "journey_enroll", "config": {"journeyId": f"j_{mode}", "mode": mode}},
            },
        )
    for mode in ("skip_if_active", "restart", "allow_multiple"):
        results = send(api, key, {"type": f"go_{mode}", "subject": "c1"}, {"type": f"go_{mode}", "subject": "c1"})
        statuses = [(a["status"], a["result"]) for r in results for a in r["actions"]]
        enrolments = api.client.get(f"/v1/journeys/j_{mode}/enrollments", headers=api.as_(key)).json()["data"]
        if mode == "skip_if_active":
            assert statuses == [("dispatched", {"enrollment": "enrolled"}), ("skipped", {"enrollment": "skipped"})]
            assert [e["status"] for e in enrolments] == ["active"]
        elif mode == "restart":
            assert statuses == [("dispatched", {"enrollment": "enrolled"}), ("dispatched", {"enrollment": "restarted"})]
            assert [e["status"] for e in enrolments] == ["restarted", "active"]
        else:
            assert statuses == [("dispatched", {"enrollment": "enrolled"})] * 2
            assert [e["status"] for e in enrolments] == ["active", "active"]
        assert {e["subject"] for e in enrolments} == {"c1"}


def test_update_attribute_and_profile(api: Api) -> None:
    key = api.key()
    create(
        api,
        key,
        {
            "name": "tier",
            "event_types": ["upgrade"],
            "action": {"type": "update_attribute", "config": {"attribute": "tier", "value_from": "data.tier"}},
        },
    )
    create(
        api,
        key,
        {
            "name": "vip",
            "event_types": ["upgrade"],
            "action": {"type": "update_attribute", "config": {"attribute": "vip", "value": True}},
        },
    )
    results = send(
        api, key, {"type": "upgrade", "subject": "c1", "data": {"tier": "gold"}}, {"type": "upgrade", "data": {}}
    )
    profile = api.client.get("/v1/subjects/c1", headers=api.as_(key)).json()
    assert profile == {
        "subject": "c1",
        "attributes": {"tier": "gold", "vip": True},
        "updated_at": profile["updated_at"],
    }
    failures = [(a["status"], a["error"]) for a in results[1]["actions"]]
    assert failures == [
        ("failed", "data.tier is absent from the event"),
        ("failed", "the event has no subject to update"),
    ]
    assert api.client.get("/v1/subjects/nobody", headers=api.as_(key)).status_code == 404


def test_webhook_action_must_name_an_endpoint_of_the_tenant_and_mode(api: Api) -> None:
    key = api.key()
    own, other_mode, other_tenant = endpoint(api, key), endpoint(api, api.key(mode="test")), endpoint(api, api.key("b"))
    created = create(api, key, hook(own))
    refused = {"whe_nope": "no webhook endpoint 'whe_nope' in this tenant and mode"}
    for endpoint_id in (other_mode, other_tenant):  # the same words as for an id that exists nowhere
        refused[endpoint_id] = f"no webhook endpoint {endpoint_id!r} in this tenant and mode"
    for endpoint_id, message in refused.items():
        error = {
            "error": "invalid trigger",
            "details": [{"field": "action.config.endpoint_id", "code": "not_found", "message": message}],
        }
        response = api.client.post("/v1/triggers", json=hook(endpoint_id), headers=api.as_(key))
        assert (response.status_code, response.json()) == (400, error)
        action = {"action": hook(endpoint_id)["action"]}
        response = api.client.patch(f"/v1/triggers/{created['id']}", json=action, headers=api.as_(key))
        assert (response.status_code, response.json()) == (400, error)
    assert api.client.get("/v1/triggers", headers=api.as_(key)).json() == {"data": [created]}

    # A trigger whose endpoint is gone can still be changed, as long as the change keeps its action.
    assert api.client.delete(f"/v1/webhooks/{own}", headers=api.as_(key)).status_code == 200
    response = api.client.patch(f"/v1/triggers/{created['id']}", json={"enabled": False}, headers=api.as_(key))
    assert (response.status_code, response.json()["enabled"]) == (200, False)


def test_webhook_action_whose_endpoint_is_gone_fails_visibly(api: Api) -> None:
    key = api.key()
    endpoint_id = endpoint(api, key)
    create(api, key, hook(endpoint_id))
    assert api.client.delete(f"/v1/webhooks/{endpoint_id}", headers=api.as_(key)).status_code == 200
    results = send(api, key, {"type": "x"})
    assert [(a["status"], a["error"]) for a in results[0]["actions"]] == [
        ("failed", f"no enabled webhook endpoint {endpoint_id!r}")
    ]
    assert len(api.client.get("/v1/actions", params={"status": "failed"}, headers=api.as_(key)).json()["data"]) == 1


def test_dry_run(api: Api) -> None:
    key = api.key()
    trigger = create(api, key, {**UPSELL, "window": {"count_at_least": 2, "within": "1d"}})
    ok = api.client.post(
        "/v1/triggers/test",
        json={"trigger_id": trigger["id"], "event": {"type": "purchase", "channel": "web", "data": {"amount": 101}}},
        headers=api.as_(key),
    ).json()
    assert ok == {
        "matched": True,
        "reasons": [],
        "notes": ["window and cooldown depend on earlier events and are not evaluated in a dry run"],
    }
    no = api.client.post(
        "/v1/triggers/test",
        json={"trigger": {**UPSELL, "event_types": ["refund"]}, "event": {"type": "purchase", "data": {"amount": 5}}},
        headers=api.as_(key),
    ).json()
    assert no == {
        "matched": False,
        "reasons": [
            "event type 'purchase' (fires on ['purchase', 'outcome.recorded']) is not in event_types ['refund']",
            "conditions.all.0: data.amount gt 100 is false (value: 5)",
            "conditions.all.1.any: none of the alternatives matched",
            'conditions.all.1.any.0: channel in ["pos","web"] is false (value: absent)',
            "conditions.all.1.any.1: data.vip exists is false (value: absent)",
        ],
        "notes": [],
    }
    bad = api.client.post(
        "/v1/triggers/test", json={"trigger_id": trigger["id"], "event": {"data": {}}}, headers=api.as_(key)
    )
    assert bad.status_code == 400
    assert bad.json()["details"][0]["field"] == "event.type"
    # A dry run fires nothing.
    assert api.client.get("/v1/actions", headers=api.as_(key)).json()["data"] == []


def test_applying_a_batch_twice_fires_once(api: Api) -> None:
    key = api.key()
    create(api, key, {**UPSELL, "conditions": None, "window": {"count_at_least": 2, "within": "1d"}})
    send(api, key, *[{"type": "purchase", "subject": "c1", "time": f"2026-01-01T0{i}:00:00Z"} for i in range(4)])
    before = api.client.get("/v1/actions", headers=api.as_(key)).json()["data"]
    assert len(before) == 1

    again = replan(api.settings, plan_triggers, 100)
    assert again.actions == []
    assert again.deliveries == []
    assert api.client.get("/v1/actions", headers=api.as_(key)).json()["data"] == before


def test_sigkilled_server_neither_loses_nor_repeats_actions(server_factory: type[ServerProcess], tmp_path: Any) -> None:
    import httpx

    data_dir = tmp_path / "data"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    server = server_factory(data_dir)
    server.start()
    rule = {"name": "every", "event_types": ["tick"], "action": {"type": "recommend", "config": {}}}
    assert httpx.post(server.url + "/v1/triggers", json=rule, headers=headers).status_code == 201
    for batch in range(10):
        events = [{"type": "tick", "subject": f"s{batch}", "idempotency_key": f"{batch}-{i}"} for i in range(100)]
        assert httpx.post(server.url + "/v1/events", json={"events": events}, headers=headers).status_code == 200
    server.kill()  # with the consumer somewhere in the middle, or not started on the last batches

    restarted = server_factory(data_dir)
    restarted.start()
    # One tock per subject, after its ticks in the subject's partition: processed means every
    # tick before it is. The killed server's worker may hold its leases while it stops, and the
    # new one takes them when it has: a wait that ends first answers 503, and new tocks wait again
    # (a condition with a bound, not a timed assertion).
    tocks = {"events": [{"type": "tock", "subject": f"s{batch}"} for batch in range(10)]}
    deadline = time.monotonic() + 90
    while True:
        last = httpx.post(restarted.url + "/v1/events?wait=processed", json=tocks, headers=headers, timeout=60)
        if last.status_code != 503 or time.monotonic() > deadline:
            break
    assert last.status_code == 200, last.text
    actions: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(restarted.url + "/v1/actions", params=params, headers=headers).json()
        actions += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(actions) == 1000
    assert len({a["event_id"] for a in actions}) == 1000
    assert len({a["id"] for a in actions}) == 1000
    restarted.stop()


def test_002_documented_examples_list_matches_and_dispatches(api: Api, carried: Carried) -> None:
    key = api.key("my-tenant", role="editor")
    recommend = create(
        api,
        key,
        {
            "name": "upsell",
            "event_types": ["purchase"],
            "priority": 10,
            "action": {"type": "recommend", "config": {"decisionFlowId": "df_upsell", "channel": "push"}},
        },
    )
    journey = create(
        api,
        key,
        {
            "name": "post purchase",
            "event_types": ["outcome.recorded"],
            "priority": 5,
            "action": {"type": "journey_enroll", "config": {"journeyId": "j_post_purchase"}},
        },
    )
    recovery = create(
        api,
        key,
        {
            "name": "recovery",
            "event_types": ["customer.updated"],
            "action": {"type": "journey_enroll", "config": {"journeyId": "j_cart_recovery"}},
        },
    )
    gone = endpoint(api, key)
    broken = create(
        api,
        key,
        {
            "name": "crm",
            "event_types": ["cart_abandon"],
            "priority": -1,
            "action": {"type": "webhook", "config": {"endpoint_id": gone}},
        },
    )
    assert api.client.delete(f"/v1/webhooks/{gone}", headers=api.as_(key)).status_code == 200
    headers = {**api.as_(key), "X-Tenant-Id": "my-tenant"}
    purchase = {
        "type": "purchase",
        "customerId": "CUST-001",
        "channel": "pos",
        "data": {"orderId": "ORD-789", "amount": 49.99, "productId": "SKU-456", "storeId": "STORE-01"},
    }
    response = api.client.post("/api/v1/events/ingest", json=purchase, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "ingested": True,
        "eventType": "purchase",
        "customerId": "CUST-001",
        "streamId": body["streamId"],
        "triggersMatched": [
            {"triggerId": recommend["id"], "actionType": "recommend"},
            {"triggerId": journey["id"], "actionType": "journey_enroll"},
        ],
        "actionsDispatched": [
            {
                "triggerId": recommend["id"],
                "actionType": "recommend",
                "config": {"decisionFlowId": "df_upsell", "channel": "push"},
            },
            {"triggerId": journey["id"], "actionType": "journey_enroll", "config": {"journeyId": "j_post_purchase"}},
        ],
    }
    # The streamId names the event: with a bus, its entry carries it; without, it is the event's id.
    event_id = carried.event_id(body["streamId"]) if carried.bus else body["streamId"]
    stored = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key)).json()
    assert (stored["type"], stored["subject"], stored["channel"]) == ("purchase", "CUST-001", "pos")

    cart = {
        "type": "cart_abandon",
        "customerId": "CUST-002",
        "channel": "web",
        "data": {"cartValue": 129.99, "itemCount": 3, "abandonedUrl": "/checkout"},
    }
    body = api.client.post("/api/v1/events/ingest", json=cart, headers=headers).json()
    assert body == {
        "ingested": True,
        "eventType": "cart_abandon",
        "customerId": "CUST-002",
        "streamId": body["streamId"],
        "triggersMatched": [
            {"triggerId": recovery["id"], "actionType": "journey_enroll"},
            {"triggerId": broken["id"], "actionType": "webhook"},
        ],
        "actionsDispatched": [
            {"triggerId": recovery["id"], "actionType": "journey_enroll", "config": {"journeyId": "j_cart_recovery"}},
        ],
        "actionErrors": [
            {"triggerId": broken["id"], "actionType": "webhook", "error": f"no enabled webhook endpoint {gone!r}"},
        ],
    }
    enrolled = api.client.get("/v1/journeys/j_cart_recovery/enrollments", headers=api.as_(key)).json()["data"]
    assert [(e["subject"], e["status"]) for e in enrolled] == [("CUST-002", "active")]
