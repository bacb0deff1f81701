"""Seed 003: /api/v1/ingest/events (async, batch, sync), with the document's own examples."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import Api, Carried
from tests.dialects import (
    DEEP,
    INVALID_KEY,
    UNAUTHENTICATED,
    bare,
    canonical,
    error,
    log_id,
    message_id,
    nested,
    quarantine_item,
    quarantined,
    received_at,
    stored,
)

PREFIXES = ["/api/v1", ""]

# The document's three example request bodies (the curl -d arguments), verbatim.
ASYNC_BODY = """{
    "event_name": "purchase_completed",
    "participant_id": "user_123",
    "properties": {
      "amount": 49.99,
      "currency": "USD",
      "product_id": "prod_abc"
    },
    "timestamp": "2026-04-10T10:30:00Z"
  }"""
BATCH_BODY = """{
    "events": [
      {
        "event_name": "page_view",
        "participant_id": "user_123",
        "properties": {"page": "/products"}
      },
      {
        "event_name": "add_to_cart",
        "participant_id": "user_123",
        "properties": {"product_id": "prod_abc", "quantity": 1}
      },
      {
        "event_name": "purchase_completed",
        "participant_id": "user_123",
        "properties": {"amount": 49.99, "currency": "USD"}
      }
    ]
  }"""
SYNC_BODY = """{
    "event_name": "level_completed",
    "participant_id": "user_123",
    "properties": {
      "level": 5,
      "score": 9200,
      "time_seconds": 120
    }
  }"""
INVALID = "invalid event"


def post(api: Api, key: str, path: str, body: str | bytes, prefix: str = "/api/v1") -> Any:
    return api.client.post(prefix + path, content=body, headers={"X-API-Key": key})


def invalid(*details: tuple[str, str, str]) -> dict[str, Any]:
    return {"error": INVALID, "details": [{"field": f, "code": c, "message": m} for f, c, m in details]}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_documented_async_ingest(api: Api, carried: Carried, prefix: str) -> None:
    key = api.key()
    response = post(api, key, "/ingest/events", ASYNC_BODY, prefix)
    [event] = stored(api, key)
    expected = {"accepted": True, "message_id": message_id(carried, event)}
    assert (response.status_code, response.json()) == (202, expected)
    assert event == canonical(
        event["id"],
        "purchase_completed",
        subject="user_123",
        time="2026-04-10T10:30:00Z",
        data={"amount": 49.99, "currency": "USD", "product_id": "prod_abc"},
        seq=1,
    )
    # The millisecond part is when it was received (the event id's time, or when Redis added it).
    ms = int(response.json()["message_id"].split("-")[0])
    received = datetime.fromisoformat(received_at(api, key, event["id"]))
    assert abs(ms / 1000 - received.timestamp()) < 1


def test_idempotency_key_answers_with_the_original_message_id(api: Api, carried: Carried) -> None:
    key = api.key()
    body = json.loads(ASYNC_BODY) | {"idempotency_key": "order-789"}
    first = post(api, key, "/ingest/events", json.dumps(body))
    again = post(api, key, "/ingest/events", json.dumps(body | {"properties": {"amount": 1}}), prefix="")
    [event] = stored(api, key)
    assert first.json() == {"accepted": True, "message_id": message_id(carried, event)}
    assert again.json() == {"accepted": True, "message_id": log_id(event)}
    assert event["idempotency_key"] == "order-789"
    assert event["data"] == body["properties"]


def test_defaults(api: Api) -> None:
    key = api.key()
    response = post(api, key, "/ingest/events", '{"event_name": "login", "participant_id": "p", "properties": null}')
    assert response.status_code == 202, response.text
    [event] = stored(api, key)
    assert event == canonical(
        event["id"], "login", subject="p", time=received_at(api, key, event["id"]), data={}, seq=1
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_documented_batch(api: Api, carried: Carried, prefix: str) -> None:
    key = api.key()
    response = post(api, key, "/ingest/events/batch", BATCH_BODY, prefix)
    events = sorted(stored(api, key), key=lambda e: e["seq"])
    assert (response.status_code, response.json()) == (
        202,
        {"accepted": 3, "rejected": 0, "message_ids": [message_id(carried, e) for e in events]},
    )
    items = json.loads(BATCH_BODY)["events"]
    assert events == [
        canonical(
            e["id"],
            item["event_name"],
            subject="user_123",
            time=received_at(api, key, e["id"]),
            data=item["properties"],
            seq=seq,
        )
        for seq, (e, item) in enumerate(zip(events, items, strict=True), start=1)
    ]


def test_batch_partial_failure(api: Api, carried: Carried) -> None:
    key = api.key()
    [page_view, add_to_cart, purchase] = [json.dumps(e) for e in json.loads(BATCH_BODY)["events"]]
    bad = [
        '{"event_name": "page_view"}',
        "42",
        '{"event_name": "x", "participant_id": "u", "properties": [1], "points": 5, "data": {}}',
        '{"event_name": "", "participant_id": "u", "timestamp": "yesterday", "idempotency_key": ""}',
    ]
    body = '{"events": [' + ", ".join([page_view, bad[0], add_to_cart, bad[1], bad[2], bad[3], purchase]) + "]}"
    response = post(api, key, "/ingest/events/batch", body)
    events = sorted(stored(api, key), key=lambda e: e["seq"])
    assert [e["type"] for e in events] == ["page_view", "add_to_cart", "purchase_completed"]
    problems = [
        [("participant_id", "required", "is required")],
        [("", "invalid_type", "must be an object, got number")],
        [
            ("properties", "invalid_type", "must be an object, got array"),
            ("points", "unknown_field", "unknown field"),
            ("data", "unknown_field", "unknown field"),
        ],
        [
            ("event_name", "too_short", "must not be empty"),
            ("timestamp", "invalid_format", "must be a valid ISO 8601 datetime"),
            ("idempotency_key", "too_short", "must not be empty"),
        ],
    ]
    assert (response.status_code, response.json()) == (
        202,
        {
            "accepted": 3,
            "rejected": 4,
            "message_ids": [message_id(carried, e) for e in events],
            "errors": [
                {"index": index, "field": f, "code": c, "message": m}
                for index, found in zip((1, 3, 4, 5), problems, strict=True)
                for f, c, m in found
            ],
        },
    )
    assert quarantined(api, key) == [
        quarantine_item("gamification", invalid(*found)["details"], raw)
        for raw, found in zip(bad, problems, strict=True)
    ]


def test_batch_duplicates_count_as_accepted(api: Api, carried: Carried) -> None:
    key = api.key()
    event = {"event_name": "e", "participant_id": "p", "idempotency_key": "k"}
    response = post(api, key, "/ingest/events/batch", json.dumps({"events": [event, event]}))
    [stored_event] = stored(api, key)
    ids = [message_id(carried, stored_event), log_id(stored_event)]  # the second is the first's duplicate
    assert response.json() == {"accepted": 2, "rejected": 0, "message_ids": ids}


def test_batch_with_a_strict_schema(api: Api, carried: Carried) -> None:
    key = api.key()
    schema = {"type": "object", "properties": {"quantity": {"type": "integer", "minimum": 1}}}
    response = api.client.put(
        "/v1/schemas/add_to_cart", json={"schema": schema, "enforcement": "strict"}, headers=api.as_(key)
    )
    assert response.status_code == 201, response.text
    body = BATCH_BODY.replace('"quantity": 1', '"quantity": 0')
    response = post(api, key, "/ingest/events/batch", body)
    events = sorted(stored(api, key), key=lambda e: e["seq"])
    assert [e["type"] for e in events] == ["page_view", "purchase_completed"]
    message = "0 is less than the minimum of 1"
    assert response.json() == {
        "accepted": 2,
        "rejected": 1,
        "message_ids": [message_id(carried, e) for e in events],
        "errors": [{"index": 1, "field": "properties.quantity", "code": "schema.minimum", "message": message}],
    }
    [item] = quarantined(api, key)
    assert (item["dialect"], item["type"], item["reasons"]) == (
        "gamification",
        "add_to_cart",
        [{"field": "data.quantity", "code": "schema.minimum", "message": message}],
    )
    response = post(api, key, "/ingest/events", json.dumps(json.loads(body)["events"][1]))
    assert (response.status_code, response.json()) == (400, invalid(("properties.quantity", "schema.minimum", message)))


def test_batch_limits(api: Api) -> None:
    key = api.key()
    one = '{"event_name": "e", "participant_id": "p"}'
    response = post(api, key, "/ingest/events/batch", '{"events": [' + ", ".join([one] * 101) + "]}")
    assert response.status_code == 413
    assert response.json() == {
        "error": "a request may carry at most 100 events; this one has 101",
        "details": [{"field": "events", "code": "too_many", "message": "at most 100 events per request"}],
    }
    assert stored(api, key) == []
    response = post(api, key, "/ingest/events/batch", '{"events": []}')
    assert (response.status_code, response.json()) == (400, error("events must not be empty", "events", "too_short"))
    response = post(api, key, "/ingest/events/batch", ASYNC_BODY)
    assert (response.status_code, response.json()) == (
        400,
        error("unknown field 'event_name' in a batch body", "event_name", "unknown_field"),
    )
    response = post(api, key, "/ingest/events/batch", '{"events": [' + ", ".join([one] * 100) + "]}")
    assert response.json()["accepted"] == 100


@pytest.mark.parametrize("prefix", PREFIXES)
def test_documented_sync_ingest(api: Api, prefix: str) -> None:
    key = api.key()
    response = post(api, key, "/ingest/events/sync", SYNC_BODY, prefix)
    assert response.status_code == 200, response.text
    [event] = stored(api, key)
    body = response.json()
    processed_at = body.pop("processed_at")
    assert processed_at.endswith("Z")
    # Processed "at" the event's receive time, so that replaying the log reproduces the fact.
    assert datetime.fromisoformat(processed_at) == datetime.fromisoformat(received_at(api, key, event["id"]))
    assert body == {
        "event_id": event["id"],
        "fact_id": "fact_" + event["id"].removeprefix("evt_"),
        "fact_type": "custom.level_completed",
        "progress": [],
        "awards": [],
    }
    assert event == canonical(
        event["id"],
        "level_completed",
        subject="user_123",
        time=received_at(api, key, event["id"]),
        data={"level": 5, "score": 9200, "time_seconds": 120},
        seq=1,
    )


def test_sync_duplicate_answers_with_the_original_fact(api: Api) -> None:
    key = api.key()
    body = json.loads(SYNC_BODY) | {"idempotency_key": "run-1"}
    first = post(api, key, "/ingest/events/sync", json.dumps(body))
    # Even under another event name: the original event is what the fact is about.
    again = post(api, key, "/ingest/events/sync", json.dumps(body | {"event_name": "other"}), prefix="")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["fact_type"] == "custom.level_completed"
    # An event first sent async gets its fact when it is re-sent sync.
    async_body = json.loads(ASYNC_BODY) | {"idempotency_key": "order-1"}
    assert post(api, key, "/ingest/events", json.dumps(async_body)).status_code == 202
    response = post(api, key, "/ingest/events/sync", json.dumps(async_body))
    original = next(e for e in stored(api, key) if e["idempotency_key"] == "order-1")
    assert response.json() | {"processed_at": None} == {
        "event_id": original["id"],
        "fact_id": "fact_" + original["id"][4:],
        "fact_type": "custom.purchase_completed",
        "processed_at": None,
        "progress": [],
        "awards": [],
    }
    assert len(stored(api, key)) == 2


@pytest.mark.parametrize("path", ["/ingest/events", "/ingest/events/sync"])
def test_invalid_single_event_is_400_and_quarantined(api: Api, path: str) -> None:
    key = api.key()
    body = '{"participant_id": 7, "properties": "none", "timestamp": "10:30", "event": "x", "data": {}}'
    response = post(api, key, path, body)
    problems = [
        ("event_name", "required", "is required"),
        ("participant_id", "invalid_type", "must be a string, got number"),
        ("properties", "invalid_type", "must be an object, got string"),
        ("timestamp", "invalid_format", "must be a valid ISO 8601 datetime"),
        ("event", "unknown_field", "unknown field"),
        ("data", "unknown_field", "unknown field"),  # the client's own field, not `properties`
    ]
    assert (response.status_code, response.json()) == (400, invalid(*problems))
    assert stored(api, key) == []
    assert quarantined(api, key) == [quarantine_item("gamification", invalid(*problems)["details"], body)]


@pytest.mark.parametrize("path", ["/ingest/events", "/ingest/events/batch", "/ingest/events/sync"])
def test_authentication(api: Api, path: str) -> None:
    body = BATCH_BODY if path.endswith("batch") else ASYNC_BODY
    response = api.client.post("/api/v1" + path, content=body)
    assert (response.status_code, response.json()) == (401, UNAUTHENTICATED)
    response = post(api, "bq_live_your_key", path, body)
    assert (response.status_code, response.json()) == (401, INVALID_KEY)
    response = post(api, api.key(role="viewer"), path, body)
    assert (response.status_code, response.json()) == (403, bare("the viewer role may not ingest"))
    test_key = api.key(role="ingest", mode="test")  # a bq_test_ key, in Headwater's terms
    assert post(api, test_key, path, body).status_code in (200, 202)
    assert {e["mode"] for e in stored(api, api.key(mode="test"))} == {"test"}
    assert stored(api, api.key()) == []


@pytest.mark.parametrize("path", ["/ingest/events", "/ingest/events/batch", "/ingest/events/sync"])
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b"hello",
            error("request body is not valid JSON: JSON is malformed: invalid character (byte 0)", code="invalid_json"),
            id="not-json",
        ),
        pytest.param(
            ASYNC_BODY[:-4],
            error("request body is not valid JSON: Input data was truncated", code="invalid_json"),
            id="truncated",
        ),
        pytest.param(b"", error("request body is empty: send a JSON object", code="required"), id="empty"),
        pytest.param(b"[{}]", error("request body must be a JSON object", code="invalid_type"), id="array"),
        pytest.param(
            '{"events": [{"properties": {"p": ' + nested(DEEP) + "}}]}",
            error("JSON nests deeper than 64 levels", code="too_deep"),
            id="deep-nesting",
        ),
    ],
)
def test_unreadable_bodies(api: Api, path: str, body: str | bytes, expected: dict[str, Any]) -> None:
    key = api.key()
    response = post(api, key, path, body)
    assert (response.status_code, response.json()) == (400, expected)
    assert stored(api, key) == []
    assert quarantined(api, key) == []


def test_hostile_strings(api: Api) -> None:
    key = api.key()
    huge = json.dumps({"event_name": "n" * 100_000, "participant_id": "p" * 257, "idempotency_key": "k" * 257})
    problems = [
        ("event_name", "too_long", "must be at most 128 characters"),
        ("participant_id", "too_long", "must be at most 256 characters"),
        ("idempotency_key", "too_long", "must be at most 256 characters"),
    ]
    response = post(api, key, "/ingest/events", huge)
    assert (response.status_code, response.json()) == (400, invalid(*problems))
    response = post(api, key, "/ingest/events/batch", '{"events": [' + huge + "]}")
    assert response.json() == {
        "accepted": 0,
        "rejected": 1,
        "message_ids": [],
        "errors": [{"index": 0, "field": f, "code": c, "message": m} for f, c, m in problems],
    }
    properties = {"text": "x" * 4_000_000, "control": "\u0000\u001f"}
    body = json.dumps({"event_name": "big", "participant_id": "p", "properties": properties})
    assert post(api, key, "/ingest/events/sync", body).status_code == 200
    assert stored(api, key)[0]["data"] == properties
