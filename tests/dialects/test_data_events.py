"""Seed 000: POST/GET /api/openapi/v1/data/events, with the document's own examples."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Api
from tests.dialects import (
    DEEP,
    INVALID_KEY,
    OTHER_TENANT,
    UNAUTHENTICATED,
    bare,
    canonical,
    error,
    nested,
    quarantine_item,
    quarantined,
    stored,
)

PATH = "/api/openapi/v1/data/events"

# The document's request body, verbatim.
DOC_BODY = """{
  "events": [
    {
      "event_type": "uwb_location",
      "event_id": "loc_20260412_001",
      "source": "virtual_store_server",
      "payload": {
        "customer_id": "cust_123",
        "position": {"x": 12.5, "y": 8.3, "z": 1.2},
        "zone": "produce_section",
        "timestamp": "2026-04-12T10:30:00Z"
      }
    }
  ]
}"""
DOC_PAYLOAD = {
    "customer_id": "cust_123",
    "position": {"x": 12.5, "y": 8.3, "z": 1.2},
    "zone": "produce_section",
    "timestamp": "2026-04-12T10:30:00Z",
}
# The document's "Event Type Examples", verbatim.
UWB = (
    '{"event_type": "uwb_location", "payload": {"customer_id": "cust_123", "position": {"x": 12.5, "y": 8.3},'
    ' "zone": "electronics", "timestamp": "2026-04-12T10:30:00Z"}}'
)
POS = (
    '{"event_type": "pos_transaction", "payload": {"transaction_id": "TXN001", "items": [{"sku": "A001", "qty": 1,'
    ' "price": 298}], "total": 298, "timestamp": "2026-04-12T10:35:00Z"}}'
)
ZONE = (
    '{"event_type": "zone_trigger", "payload": {"customer_id": "cust_123", "zone": "deli_section",'
    ' "trigger_type": "enter", "timestamp": "2026-04-12T10:32:00Z"}}'
)
DOC_QUERY = "?event_type=pos_transaction&from=2026-04-01&to=2026-04-12&limit=100"
NOT_STORED = "invalid events: nothing in this batch was stored"


def post(api: Api, key: str, body: str | bytes, headers: dict[str, str] | None = None) -> Any:
    return api.client.post(PATH, content=body, headers={**api.as_(key), **(headers or {})})


def accepted(api: Api, key: str, body: str) -> list[str]:
    response = post(api, key, body)
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()["data"]["event_ids"]
    assert response.json() == {"success": True, "data": {"received": len(ids), "event_ids": ids}}
    return ids


def batch(*items: str) -> str:
    return '{"events": [' + ", ".join(items) + "]}"


def test_documented_request_and_response(api: Api) -> None:
    key = api.key()
    response = post(api, key, DOC_BODY)
    assert response.status_code == 200, response.text
    [event_id] = response.json()["data"]["event_ids"]
    assert response.json() == {"success": True, "data": {"received": 1, "event_ids": [event_id]}}
    assert stored(api, key) == [
        canonical(
            event_id,
            "uwb_location",
            subject="cust_123",
            source="virtual_store_server",
            time="2026-04-12T10:30:00Z",
            key="loc_20260412_001",
            data=DOC_PAYLOAD,
            seq=1,
        )
    ]


def test_event_type_examples_map_to_canonical_events(api: Api) -> None:
    key = api.key()
    ids = accepted(api, key, batch(UWB, POS, ZONE))
    assert len(ids) == 3
    uwb, pos, zone = (json.loads(item)["payload"] for item in (UWB, POS, ZONE))
    # Newest event time first; POS has no customer_id, so no subject.
    assert stored(api, key) == [
        canonical(ids[1], "pos_transaction", time="2026-04-12T10:35:00Z", data=pos, seq=2),
        canonical(ids[2], "zone_trigger", subject="cust_123", time="2026-04-12T10:32:00Z", data=zone, seq=3),
        canonical(ids[0], "uwb_location", subject="cust_123", time="2026-04-12T10:30:00Z", data=uwb, seq=1),
    ]


def test_resending_an_event_id_is_a_no_op_reporting_the_original(api: Api) -> None:
    key = api.key()
    [original] = accepted(api, key, DOC_BODY)
    response = post(api, key, batch(UWB, json.dumps(json.loads(DOC_BODY)["events"][0])))
    new_id = response.json()["data"]["event_ids"][0]
    # `received` counts both: the re-sent event is in the log (as the original).
    assert response.json() == {"success": True, "data": {"received": 2, "event_ids": [new_id, original]}}
    twice = {"event_type": "t", "event_id": "k", "payload": {}}
    third = accepted(api, key, batch(json.dumps(twice), json.dumps(twice)))
    assert third[0] == third[1]
    # Newest time first; the two 10:30 events by log order.
    assert [e["id"] for e in stored(api, key)] == [third[0], new_id, original]


def test_payload_hints_that_are_not_usable_are_just_data(api: Api) -> None:
    key = api.key()
    payload = {"customer_id": 42, "timestamp": "last tuesday"}
    [event_id] = accepted(api, key, batch(json.dumps({"event_type": "odd", "payload": payload})))
    [event] = stored(api, key)
    received = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key)).json()["received_at"]
    assert event == canonical(event_id, "odd", time=received, data=payload, seq=1)


def test_an_invalid_event_refuses_the_whole_batch_and_is_quarantined(api: Api) -> None:
    key = api.key()
    bad = [
        '{"event_type": "no_payload"}',
        '{"event_type": 7, "payload": [1], "source": null, "event_id": ""}',
        '"just a string"',
        '{"event_type": "x", "payload": {}, "customer_id": "c1"}',
    ]
    response = post(api, key, batch(UWB, *bad))
    assert response.status_code == 400
    assert response.json() == {
        "error": NOT_STORED,
        "details": [
            {"field": "events.1.payload", "code": "required", "message": "is required"},
            {"field": "events.2.event_type", "code": "invalid_type", "message": "must be a string, got number"},
            {"field": "events.2.event_id", "code": "too_short", "message": "must not be empty"},
            {"field": "events.2.payload", "code": "invalid_type", "message": "must be an object, got array"},
            {"field": "events.3", "code": "invalid_type", "message": "must be an object, got string"},
            {"field": "events.4.customer_id", "code": "unknown_field", "message": "unknown field"},
        ],
    }
    assert stored(api, key) == []  # the valid first event was not stored either
    assert quarantined(api, key) == [
        quarantine_item("data_events", [{"field": "payload", "code": "required", "message": "is required"}], bad[0]),
        quarantine_item(
            "data_events",
            [
                {"field": "event_type", "code": "invalid_type", "message": "must be a string, got number"},
                {"field": "event_id", "code": "too_short", "message": "must not be empty"},
                {"field": "payload", "code": "invalid_type", "message": "must be an object, got array"},
            ],
            bad[1],
        ),
        quarantine_item(
            "data_events", [{"field": "", "code": "invalid_type", "message": "must be an object, got string"}], bad[2]
        ),
        quarantine_item(
            "data_events", [{"field": "customer_id", "code": "unknown_field", "message": "unknown field"}], bad[3]
        ),
    ]
    # Fixed and resent, the batch goes in whole.
    assert len(accepted(api, key, batch(UWB, POS))) == 2


def test_a_strict_schema_refuses_the_whole_batch_and_replay_stores_the_item(api: Api) -> None:
    key = api.key()

    def put_schema(enforcement: str) -> None:
        schema = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
        body = {"schema": schema, "enforcement": enforcement}
        response = api.client.put("/v1/schemas/pos_transaction", json=body, headers=api.as_(key))
        assert response.status_code == 201, response.text

    put_schema("strict")
    bad_pos = '{"event_type": "pos_transaction", "payload": {"total": "298", "timestamp": "2026-04-12T10:35:00Z"}}'
    response = post(api, key, batch(UWB, bad_pos))
    assert response.status_code == 400
    assert response.json() == error(
        '"298" is not of type "number"', "events.1.payload.total", "schema.type", title=NOT_STORED
    )
    assert stored(api, key) == []
    # Kept as every API keeps a schema's refusal: with the canonical draft it was read as.
    reasons = [{"field": "data.total", "code": "schema.type", "message": '"298" is not of type "number"'}]
    payload = json.loads(bad_pos)["payload"]
    draft = {"type": "pos_transaction", "subject": None, "source": None, "channel": None}
    draft |= {"time": "2026-04-12T10:35:00Z", "idempotency_key": None, "data": payload, "raw": None}
    item = quarantine_item("data_events", reasons, bad_pos) | {"type": "pos_transaction", "draft": draft}
    assert quarantined(api, key) == [item]
    assert len(accepted(api, key, batch(UWB, POS))) == 2

    # Once the schema is relaxed, a replay stores the item, at its own time.
    put_schema("soft")
    response = api.client.post("/v1/quarantine/replay", json={"filter": {}}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert (result["status"], response.json()["replayed"]) == ("accepted", 1)
    replayed = next(e for e in stored(api, key) if e["id"] == result["event_id"])
    assert replayed["time"] == "2026-04-12T10:35:00Z"
    assert (replayed["type"], replayed["data"]) == ("pos_transaction", json.loads(bad_pos)["payload"])


def test_query_as_documented(api: Api) -> None:
    key = api.key()
    uwb_id, pos_id, zone_id = accepted(api, key, batch(UWB, POS, ZONE))
    later_pos = (
        '{"event_type": "pos_transaction", "source": "till-2", "payload": {"timestamp": "2026-04-13T09:00:00Z"}}'
    )
    [later_id] = accepted(api, key, batch(later_pos))
    native = api.client.post(
        "/v1/events", json={"type": "pos_transaction", "time": "2026-04-02T08:00:00Z"}, headers=api.as_(key)
    )
    native_id = native.json()["results"][0]["id"]

    response = api.client.get(PATH + DOC_QUERY, headers=api.as_(key))
    assert response.status_code == 200, response.text
    body = response.json()
    received = {e["id"]: e.pop("received_at") for e in body["data"]["events"]}
    assert list(received) == [pos_id, native_id]  # the 13th is past `to`; an event from any API is listed
    assert body == {
        "success": True,
        "data": {
            "events": [
                {
                    "id": pos_id,
                    "event_type": "pos_transaction",
                    "event_id": None,
                    "source": None,
                    "payload": json.loads(POS)["payload"],
                    "time": "2026-04-12T10:35:00Z",
                },
                {
                    "id": native_id,
                    "event_type": "pos_transaction",
                    "event_id": None,
                    "source": None,
                    "payload": {},
                    "time": "2026-04-02T08:00:00Z",
                },
            ],
            "next_cursor": None,
        },
    }

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.client.get(PATH, params=params, headers=api.as_(key)).json()["data"]
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [later_id, pos_id, zone_id, uwb_id, native_id]
    by_source = api.client.get(PATH, params={"source": "till-2"}, headers=api.as_(key)).json()
    assert [e["id"] for e in by_source["data"]["events"]] == [later_id]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?limit=0", error("limit must be between 1 and 1000", "limit", "out_of_range")),
        ("?limit=many", error("limit must be an integer", "limit", "invalid_type")),
        ("?from=yesterday", error("not an ISO 8601 timestamp: 'yesterday'", "from", "invalid_format")),
        ("?cursor=!!", error("cursor is not one this API returned", "cursor", "invalid")),
    ],
)
def test_query_parameter_errors(api: Api, query: str, expected: dict[str, Any]) -> None:
    response = api.client.get(PATH + query, headers=api.as_(api.key()))
    assert response.status_code == 400
    assert response.json() == expected


def test_authentication_and_roles(api: Api) -> None:
    assert api.client.post(PATH, content=DOC_BODY).json() == UNAUTHENTICATED
    assert api.client.post(PATH, content=DOC_BODY).status_code == 401
    response = post(api, "hw_live_" + "x" * 43, DOC_BODY)
    assert (response.status_code, response.json()) == (401, INVALID_KEY)
    response = post(api, api.key(role="viewer"), DOC_BODY)
    assert (response.status_code, response.json()) == (403, bare("the viewer role may not ingest"))
    response = api.client.get(PATH, headers=api.as_(api.key(role="ingest")))
    assert (response.status_code, response.json()) == (403, bare("the ingest role may not read"))
    response = post(api, api.key(), DOC_BODY, {"X-Tenant-Id": "someone-else"})
    assert (response.status_code, response.json()) == (403, OTHER_TENANT)
    response = api.client.get(PATH, headers={})
    assert (response.status_code, response.json()) == (401, UNAUTHENTICATED)


def test_ingest_and_test_keys_see_their_own_mode(api: Api) -> None:
    live, test = api.key(role="ingest"), api.key(mode="test")
    [event_id] = accepted(api, live, DOC_BODY)
    [test_id] = accepted(api, test, DOC_BODY)  # the same event_id is a new event in test mode
    assert test_id != event_id
    assert [e["id"] for e in stored(api, test)] == [test_id]


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param(
            b"hello",
            400,
            error("request body is not valid JSON: JSON is malformed: invalid character (byte 0)", code="invalid_json"),
            id="not-json",
        ),
        pytest.param(
            DOC_BODY[:-3],
            400,
            error("request body is not valid JSON: Input data was truncated", code="invalid_json"),
            id="truncated",
        ),
        pytest.param(b"", 400, error("request body is empty: send a JSON object", code="required"), id="empty"),
        pytest.param(b"[]", 400, error("request body must be a JSON object", code="invalid_type"), id="array"),
        pytest.param(b"{}", 400, error("events is required", "events", "required"), id="no-events"),
        pytest.param(b'{"events": null}', 400, error("events is required", "events", "required"), id="null-events"),
        pytest.param(
            b'{"events": {}}', 400, error("events must be an array of objects", "events", "invalid_type"), id="object"
        ),
        pytest.param(b'{"events": []}', 400, error("events must not be empty", "events", "too_short"), id="none"),
        pytest.param(
            b'{"events": [], "project": "p"}',
            400,
            error("unknown field 'project' in a batch body", "project", "unknown_field"),
            id="unknown-top-level",
        ),
        pytest.param(
            b'{"events": [{"event_type": "a", "payload": {}}]}\xff',
            400,
            error("request body is not valid UTF-8: invalid start byte at byte 48", code="invalid_utf8"),
            id="bad-utf8",
        ),
        pytest.param(
            '{"events": [{"event_type": "a", "payload": {"deep": ' + nested(DEEP) + "}}]}",
            400,
            error("JSON nests deeper than 64 levels", code="too_deep"),
            id="deep-nesting",
        ),
    ],
)
def test_unreadable_bodies(api: Api, body: str | bytes, status: int, expected: dict[str, Any]) -> None:
    key = api.key()
    response = post(api, key, body)
    assert (response.status_code, response.json()) == (status, expected)
    assert stored(api, key) == []
    assert quarantined(api, key) == []  # an unreadable request is refused, not kept


def test_oversize_batches(api: Api) -> None:
    key = api.key()
    item = '{"event_type": "t", "payload": {}}'
    response = post(api, key, batch(*[item] * 1001))
    assert response.status_code == 413
    assert response.json() == {
        "error": "a request may carry at most 1000 events; this one has 1001",
        "details": [{"field": "events", "code": "too_many", "message": "at most 1000 events per request"}],
    }
    assert stored(api, key) == []
    assert len(accepted(api, key, batch(*[item] * 1000))) == 1000


def test_hostile_strings(api: Api) -> None:
    key = api.key()
    huge_type = json.dumps({"event_type": "t" * 100_000, "payload": {}})
    huge_id = json.dumps({"event_type": "t", "event_id": "k" * 257, "source": "s" * 257, "payload": {}})
    response = post(api, key, batch(huge_type, huge_id))
    assert response.status_code == 400
    assert response.json() == {
        "error": NOT_STORED,
        "details": [
            {"field": "events.0.event_type", "code": "too_long", "message": "must be at most 128 characters"},
            {"field": "events.1.event_id", "code": "too_long", "message": "must be at most 256 characters"},
            {"field": "events.1.source", "code": "too_long", "message": "must be at most 256 characters"},
        ],
    }
    # Big strings inside the free-form payload are data; a customer_id too long for a subject stays in it.
    payload = {"blob": "\u00e9\U0001f600" * 200_000, "customer_id": "c" * 300, "nul": "a\u0000b"}
    [event_id] = accepted(api, key, batch(json.dumps({"event_type": "big", "payload": payload})))
    [event] = stored(api, key)
    assert (event["id"], event["subject"], event["data"]) == (event_id, None, payload)
    response = post(api, key, batch(json.dumps({"event_type": "t", "payload": {"x": "y" * 6_000_000}})))
    assert (response.status_code, response.json()) == (413, bare("request body exceeds the limit of 5242880 bytes"))
