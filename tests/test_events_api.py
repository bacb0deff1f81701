"""The native ingest and query API, through HTTP, on every backend."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


def ingest(api: Api, key: str, body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/events", json=body, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_single_event_round_trip(api: Api) -> None:
    key = api.key()
    sent = {
        "type": "purchase",
        "subject": "cust_1",
        "source": "pos",
        "channel": "store",
        "time": "2026-04-12T10:30:00+02:00",
        "idempotency_key": "order-1",
        "data": {"amount": 12.5, "items": [{"sku": "A1"}]},
    }
    result = ingest(api, key, sent)
    event_id = result["results"][0]["id"]
    assert result == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"index": 0, "status": "accepted", "id": event_id, "errors": []}],
    }
    assert event_id.startswith("evt_") and len(event_id) == 36

    stored = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key)).json()
    received_at = stored.pop("received_at")
    assert received_at.endswith("Z")
    assert stored == {
        "id": event_id,
        "type": "purchase",
        "subject": "cust_1",
        "source": "pos",
        "channel": "store",
        "time": "2026-04-12T08:30:00Z",
        "idempotency_key": "order-1",
        "data": {"amount": 12.5, "items": [{"sku": "A1"}]},
        "tenant": "acme",
        "mode": "live",
        "seq": 1,
    }


def test_duplicate_reports_original_id(api: Api) -> None:
    key = api.key()
    first = ingest(api, key, {"type": "t", "idempotency_key": "k"})
    original = first["results"][0]["id"]
    again = ingest(
        api,
        key,
        {
            "events": [
                {"type": "t", "idempotency_key": "k"},
                {"type": "t", "idempotency_key": "k2"},
                {"type": "t", "idempotency_key": "k2"},
            ]
        },
    )
    second_id = again["results"][1]["id"]
    assert again == {
        "accepted": 1,
        "duplicates": 2,
        "rejected": 0,
        "results": [
            {"index": 0, "status": "duplicate", "id": original, "errors": []},
            {"index": 1, "status": "accepted", "id": second_id, "errors": []},
            {"index": 2, "status": "duplicate", "id": second_id, "errors": []},
        ],
    }
    listed = api.client.get("/v1/events", headers=api.as_(key)).json()
    assert [e["id"] for e in listed["data"]] == [second_id, original]


def test_a_key_that_is_an_event_id_is_that_event(api: Api) -> None:
    """What lets an export (whose keyless events are keyed by their old ids on import) go back
    into the store it came from without copies; another tenant's or mode's id is just a key."""
    key, test_key, other = api.key(), api.key(mode="test"), api.key("other")
    original = ingest(api, key, {"type": "t"})["results"][0]["id"]
    again = ingest(api, key, {"events": [{"type": "t", "idempotency_key": original}, {"type": "u"}]})
    new_id = again["results"][1]["id"]
    assert again == {
        "accepted": 1,
        "duplicates": 1,
        "rejected": 0,
        "results": [
            {"index": 0, "status": "duplicate", "id": original, "errors": []},
            {"index": 1, "status": "accepted", "id": new_id, "errors": []},
        ],
    }
    for scope in (test_key, other):
        elsewhere = ingest(api, scope, {"type": "t", "idempotency_key": original})
        assert elsewhere["accepted"] == 1 and elsewhere["results"][0]["id"] != original
    listed = api.client.get("/v1/events", headers=api.as_(key)).json()
    assert [e["id"] for e in listed["data"]] == [new_id, original]


def test_query_filters_and_cursor(api: Api) -> None:
    key = api.key()
    events = [
        {
            "type": "a" if i % 2 else "b",
            "subject": f"s{i % 3}",
            "source": "web" if i < 5 else "pos",
            "time": f"2026-04-{10 + i:02d}T12:00:00Z",
        }
        for i in range(10)
    ]
    ids = [r["id"] for r in ingest(api, key, {"events": events})["results"]]
    newest_first = ids[::-1]

    def page(params: dict[str, Any]) -> dict[str, Any]:
        response = api.client.get("/v1/events", params=params, headers=api.as_(key))
        assert response.status_code == 200, response.text
        return dict(response.json())

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        body = page(params)
        seen += [e["id"] for e in body["data"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == newest_first

    assert [e["id"] for e in page({"type": "a"})["data"]] == [ids[i] for i in (9, 7, 5, 3, 1)]
    assert [e["id"] for e in page({"type": ["a", "b"], "limit": 4})["data"]] == newest_first[:4]
    assert [e["id"] for e in page({"subject": "s0"})["data"]] == [ids[i] for i in (9, 6, 3, 0)]
    assert [e["id"] for e in page({"source": "web"})["data"]] == [ids[i] for i in (4, 3, 2, 1, 0)]
    # A date as `to` includes that whole day; `from` is inclusive.
    assert [e["id"] for e in page({"from": "2026-04-12", "to": "2026-04-14"})["data"]] == [ids[i] for i in (4, 3, 2)]
    assert [e["id"] for e in page({"from": "2026-04-12T12:00:00Z", "to": "2026-04-13T11:59:59Z"})["data"]] == [ids[2]]


def test_query_parameter_errors(api: Api) -> None:
    key = api.key()
    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"cursor": "!!"}, "cursor"),
    ]:
        response = api.client.get("/v1/events", params=params, headers=api.as_(key))
        assert response.status_code == 400
        assert response.json()["details"][0]["field"] == field


def test_health_and_ready(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    # With a bus, /readyz says how it is too.
    ready = {"status": "ready", "store": "ok"} | ({} if api.settings.bus is None else {"bus": "ok"})
    assert api.client.get("/readyz").json() == ready
