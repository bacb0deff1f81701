"""What the console reads besides the existing API: `/v1/me`, `/v1/events/{id}/effects`,
`/v1/processing` and `/v1/stats`, on every backend. (`/v1/events/live` is in test_live.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from headwater.ids import delivery_id, fact_id_for
from tests.conftest import Api

HOOK = "https://hooks.example.com/headwater"


def send(api: Api, key: str, *events: dict[str, Any], wait: bool = True) -> dict[str, Any]:
    path = "/v1/events?wait=processed" if wait else "/v1/events"
    response = api.client.post(path, json={"events": list(events)}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_me_is_the_key_the_request_was_made_with(api: Api) -> None:
    key = api.key("acme", "viewer", "test")
    response = api.client.get("/v1/me", headers=api.as_(key))
    assert response.status_code == 200
    body = response.json()
    [listed] = [k for k in api.client.get("/v1/keys", headers=api.as_(api.key("acme"))).json()["data"]
                if k["id"] == body["key_id"]]  # fmt: skip
    assert body == {
        "tenant": "acme",
        "mode": "test",
        "role": "viewer",
        "key_id": listed["id"],
        "prefix": listed["prefix"],
        "name": listed["name"],
        "publishable": False,
    }
    assert key.startswith(body["prefix"])


def test_me_needs_a_key_that_may_read(api: Api) -> None:
    assert api.client.get("/v1/me").status_code == 401
    refused = api.client.get("/v1/me", headers=api.as_(api.key("acme", "ingest")))
    assert (refused.status_code, refused.json()) == (403, {"error": "the ingest role may not read", "details": []})


def test_effects_show_the_fact_the_firings_their_actions_and_the_deliveries(api: Api) -> None:
    key = api.key("acme")
    headers = api.as_(key)
    endpoint = api.client.post("/v1/webhooks", json={"url": HOOK, "subscriptions": ["event.purchase"]}, headers=headers)
    assert endpoint.status_code == 201, endpoint.text
    endpoint_id = endpoint.json()["id"]
    trigger = api.client.post(
        "/v1/triggers",
        json={
            "name": "tell the shop",
            "event_types": ["purchase"],
            "action": {"type": "webhook", "config": {"endpoint_id": endpoint_id}},
        },
        headers=headers,
    )
    assert trigger.status_code == 201, trigger.text
    trigger_id = trigger.json()["id"]
    result = send(api, key, {"type": "purchase", "subject": "cust_1", "time": "2026-11-30T10:00:00Z"})
    [processed] = result["results"]
    event_id, [action] = processed["id"], processed["actions"]

    response = api.client.get(f"/v1/events/{event_id}/effects", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    event = api.client.get(f"/v1/events/{event_id}", headers=headers).json()
    deliveries = body.pop("deliveries")
    assert body == {
        "event": event,
        "processed": True,
        "facts": [
            {
                "fact_id": fact_id_for(event_id),
                "fact_type": "custom.purchase",
                "participant_id": "cust_1",
                "occurred_at": "2026-11-30T10:00:00Z",
                "processed_at": event["received_at"],
                "changes": None,
            }
        ],
        "firings": [
            {
                "trigger_id": trigger_id,
                "trigger_name": "tell the shop",
                "action_id": action["id"],
                "action_type": "webhook",
                "status": action["status"],
            }
        ],
        "actions": [action],
    }
    # Their status moves as the delivery worker tries the (unreachable) endpoint.
    assert sorted((d["id"], d["endpoint_id"], d["topic"], d["message_key"]) for d in deliveries) == sorted(
        [
            (delivery_id(endpoint_id, event_id), endpoint_id, "event.purchase", event_id),
            (delivery_id(endpoint_id, action["id"]), endpoint_id, "action.webhook", action["id"]),
        ]
    )


def test_effects_of_an_event_that_caused_nothing(api: Api) -> None:
    key = api.key("acme")
    [result] = send(api, key, {"type": "page_view"})["results"]
    body = api.client.get(f"/v1/events/{result['id']}/effects", headers=api.as_(key)).json()
    assert (body["processed"], body["firings"], body["actions"], body["deliveries"]) == (True, [], [], [])
    assert [f["fact_type"] for f in body["facts"]] == ["custom.page_view"]


def test_effects_of_another_tenants_or_an_unknown_event_are_404(api: Api) -> None:
    [result] = send(api, api.key("acme"), {"type": "t"}, wait=False)["results"]
    for key, event_id in (
        (api.key("globex"), result["id"]),
        (api.key("acme"), "evt_" + "0" * 32),
        (api.key("acme"), "x"),
    ):
        response = api.client.get(f"/v1/events/{event_id}/effects", headers=api.as_(key))
        assert (response.status_code, response.json()) == (404, {"error": "no such event", "details": []})


def test_processing_is_the_status_of_every_consumer(api: Api) -> None:
    key = api.key("acme")
    send(api, key, {"type": "a", "subject": "s1"}, {"type": "b", "subject": "s2"})
    response = api.client.get("/v1/processing", headers=api.as_(key))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"head", "consumers", "workers"}
    assert body["head"] == 2
    partitions = {c["partition"] for c in body["consumers"] if c["name"] == "facts"}
    assert {c["name"] for c in body["consumers"]} == {"facts", "triggers", "catalog"}
    assert len(body["consumers"]) == 2 * len(partitions) + 1
    # Both events were processed (`wait=processed`): no facts or triggers consumer lags.
    assert [c for c in body["consumers"] if c["name"] != "catalog" and c["lag"] != 0] == []
    assert len(body["workers"]) == 1


def test_stats_count_events_per_minute_and_rejections_by_reason(api: Api) -> None:
    key = api.key("acme")
    send(
        api, key, {"type": "a"}, {"type": "b"}, {"type": ""}, {"type": "c", "time": "1999-01-01T00:00:00Z"}, wait=False
    )
    send(api, key, {"nope": 1}, wait=False)
    send(api, api.key("globex"), {"type": "a"}, {"type": ""}, wait=False)  # another tenant's
    send(api, api.key("acme", mode="test"), {"type": "a"}, wait=False)  # the same tenant's other mode
    before = datetime.now(UTC)
    response = api.client.get("/v1/stats?minutes=5", headers=api.as_(key))
    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["minutes"] == 5
    minutes = [datetime.fromisoformat(m["minute"]) for m in body["ingest"]]
    assert len(minutes) == 5
    assert minutes == [minutes[0] + timedelta(minutes=n) for n in range(5)]
    assert minutes[-1] <= after and minutes[-1] + timedelta(minutes=1) > before.replace(second=0, microsecond=0)
    # A backdated event counts when it was received, not at its own time.
    assert sum(m["events"] for m in body["ingest"]) == 3
    assert body["rejections"] == [{"code": "too_short", "count": 1}, {"code": "unknown_field", "count": 1}]


@pytest.mark.parametrize(
    ("minutes", "text", "code"),
    [
        ("0", "minutes must be between 1 and 1440", "out_of_range"),
        ("1441", "minutes must be between 1 and 1440", "out_of_range"),
        ("ten", "minutes must be an integer", "invalid_type"),
    ],
)
def test_stats_window_out_of_range_is_400(api: Api, minutes: str, text: str, code: str) -> None:
    response = api.client.get(f"/v1/stats?minutes={minutes}", headers=api.as_(api.key("acme")))
    assert (response.status_code, response.json()) == (
        400,
        {"error": text, "details": [{"field": "minutes", "code": code, "message": text}]},
    )


def test_processing_is_for_admin_keys_as_it_tells_of_every_tenants_traffic(api: Api) -> None:
    for role in ("editor", "viewer", "ingest"):
        refused = api.client.get("/v1/processing", headers=api.as_(api.key("acme", role)))
        assert (refused.status_code, refused.json()) == (
            403,
            {"error": f"the {role} role may not admin", "details": []},
        )
