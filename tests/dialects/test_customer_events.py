"""Seed 002: POST /api/v1/events/ingest, typed customer events, with the document's own examples."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Api, Carried
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
    received_at,
    stored,
)

PATH = "/api/v1/events/ingest"
TENANT = "my-tenant"

# The document's two example request bodies, verbatim.
PURCHASE = """{
"type": "purchase",
"customerId": "CUST-001",
"channel": "pos",
"data": {
"orderId": "ORD-789",
"amount": 49.99,
"productId": "SKU-456",
"storeId": "STORE-01"
}
}"""
CART_ABANDON = """{
"type": "cart_abandon",
"customerId": "CUST-002",
"channel": "web",
"data": {
"cartValue": 129.99,
"itemCount": 3,
"abandonedUrl": "/checkout"
}
}"""
# The document's "Response 200", verbatim.
DOC_RESPONSE = """{
"ingested": true,
"eventType": "purchase",
"customerId": "CUST-001",
"streamId": "evt_abc123def",
"triggersMatched": [
{
"triggerId": "tr_001",
"actionType": "recommend"
},
{
"triggerId": "tr_002",
"actionType": "journey_enroll"
}
],
"actionsDispatched": [
{
"triggerId": "tr_001",
"actionType": "recommend",
"config": { "decisionFlowId": "df_upsell", "channel": "push" }
},
{
"triggerId": "tr_002",
"actionType": "journey_enroll",
"config": { "journeyId": "j_post_purchase" }
}
]
}"""
INVALID = "invalid event"


def post(api: Api, key: str | None, body: str | bytes, tenant: str | None = TENANT) -> Any:
    headers = {"Content-Type": "application/json"}
    if tenant is not None:
        headers["X-Tenant-Id"] = tenant
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return api.client.post(PATH, content=body, headers=headers)


def ingested(event_type: str, customer: str, stream_id: str) -> dict[str, Any]:
    return {
        "ingested": True,
        "eventType": event_type,
        "customerId": customer,
        "streamId": stream_id,
        "triggersMatched": [],
        "actionsDispatched": [],
    }


def invalid(*details: tuple[str, str, str]) -> dict[str, Any]:
    return {"error": INVALID, "details": [{"field": f, "code": c, "message": m} for f, c, m in details]}


def stream_id(carried: Carried, event_id: str) -> str:
    """An event's `streamId`: with a bus, its entry's id in its partition's stream; without, the
    log is the stream and it is the event's id."""
    return carried.entry_id(event_id) if carried.bus else event_id


def test_documented_examples(api: Api, carried: Carried) -> None:
    key = api.key(TENANT)
    purchase = post(api, key, PURCHASE)
    assert purchase.status_code == 200, purchase.text
    cart = post(api, key, CART_ABANDON)
    assert cart.status_code == 200, cart.text
    events = stored(api, key)
    cart_id, purchase_id = (event["id"] for event in events)  # newest first
    assert purchase.json() == ingested("purchase", "CUST-001", stream_id(carried, purchase_id))
    assert cart.json() == ingested("cart_abandon", "CUST-002", stream_id(carried, cart_id))

    # No timestamp: the event happened when it was received.
    assert events == [
        canonical(
            cart_id,
            "cart_abandon",
            subject="CUST-002",
            channel="web",
            time=received_at(api, key, cart_id),
            data=json.loads(CART_ABANDON)["data"],
            seq=2,
            tenant=TENANT,
        ),
        canonical(
            purchase_id,
            "purchase",
            subject="CUST-001",
            channel="pos",
            time=received_at(api, key, purchase_id),
            data=json.loads(PURCHASE)["data"],
            seq=1,
            tenant=TENANT,
        ),
    ]


def test_timestamp_and_defaults(api: Api, carried: Carried) -> None:
    key = api.key(TENANT)
    body = {"type": "app_open", "customerId": "CUST-003", "timestamp": "2026-04-12T10:30:00+02:00", "data": None}
    response = post(api, key, json.dumps(body), tenant=None)  # the key names the tenant
    [event] = stored(api, key)
    expected = ingested("app_open", "CUST-003", stream_id(carried, event["id"]))
    assert (response.status_code, response.json()) == (200, expected)
    assert event == canonical(
        event["id"], "app_open", subject="CUST-003", time="2026-04-12T08:30:00Z", data={}, seq=1, tenant=TENANT
    )


def test_every_type_is_accepted_and_there_is_no_dedup(api: Api) -> None:
    key = api.key(TENANT)
    for event_type in ("purchase", "cart_abandon", "page_view", "app_open", "support_call"):
        response = post(api, key, json.dumps({"type": event_type, "customerId": "C"}))
        assert response.json() == ingested(event_type, "C", response.json()["streamId"])
    post(api, key, PURCHASE)
    post(api, key, PURCHASE)  # this API has no idempotency field: a retry is a second event
    assert len(stored(api, key)) == 7


def test_roles_and_tenant(api: Api) -> None:
    for role in ("admin", "editor"):
        assert post(api, api.key(TENANT, role), PURCHASE).status_code == 200
    response = post(api, api.key(TENANT, "ingest"), PURCHASE)
    message = "the ingest role may not use this API: it needs admin or editor"
    assert (response.status_code, response.json()) == (403, bare(message))
    response = post(api, api.key(TENANT, "viewer"), PURCHASE)
    assert (response.status_code, response.json()) == (403, bare("the viewer role may not ingest"))
    response = post(api, api.key("other-tenant"), PURCHASE)
    assert (response.status_code, response.json()) == (403, OTHER_TENANT)
    # The document's cart_abandon example sends no Authorization header.
    response = post(api, None, CART_ABANDON)
    assert (response.status_code, response.json()) == (401, UNAUTHENTICATED)
    response = post(api, "<token>", CART_ABANDON)
    assert (response.status_code, response.json()) == (401, INVALID_KEY)
    assert len(stored(api, api.key(TENANT))) == 2


def test_invalid_events_are_400_and_quarantined(api: Api) -> None:
    key = api.key(TENANT)
    refund = PURCHASE.replace('"purchase"', '"refund"')
    response = post(api, key, refund)
    enum = ("type", "invalid_value", "must be one of purchase, cart_abandon, page_view, app_open, support_call")
    assert (response.status_code, response.json()) == (400, invalid(enum))
    missing = '{"type": "purchase"}'
    response = post(api, key, missing)
    assert (response.status_code, response.json()) == (400, invalid(("customerId", "required", "is required")))
    wrong = json.dumps(
        {"type": "Purchase", "customerId": 1, "data": [1], "channel": {"a": 1}, "timestamp": "soon", "amount": 5}
    )
    response = post(api, key, wrong)
    problems = [
        ("type", "invalid_value", enum[2]),
        ("customerId", "invalid_type", "must be a string, got number"),
        ("data", "invalid_type", "must be an object, got array"),
        ("channel", "invalid_type", "must be a string, got object"),
        ("timestamp", "invalid_format", "must be a valid ISO 8601 datetime"),
        ("amount", "unknown_field", "unknown field"),
    ]
    assert (response.status_code, response.json()) == (400, invalid(*problems))
    assert stored(api, key) == []

    def item(raw: str, *details: tuple[str, str, str]) -> dict[str, Any]:
        return quarantine_item("customer_events", invalid(*details)["details"], raw, tenant=TENANT)

    assert quarantined(api, key) == [
        item(refund, enum),
        item(missing, ("customerId", "required", "is required")),
        item(wrong, *problems),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b"hello",
            error("request body is not valid JSON: JSON is malformed: invalid character (byte 0)", code="invalid_json"),
            id="not-json",
        ),
        pytest.param(
            PURCHASE[:-2],
            error("request body is not valid JSON: Input data was truncated", code="invalid_json"),
            id="truncated",
        ),
        pytest.param(b"", error("request body is empty: send a JSON object", code="required"), id="empty"),
        pytest.param(b"[]", error("request body must be a JSON object", code="invalid_type"), id="array"),
        pytest.param(b"null", error("request body must be a JSON object", code="invalid_type"), id="null"),
        pytest.param(
            '{"type": "purchase", "customerId": "C", "data": {"d": ' + nested(DEEP) + "}}",
            error("JSON nests deeper than 64 levels", code="too_deep"),
            id="deep-nesting",
        ),
    ],
)
def test_unreadable_bodies(api: Api, body: str | bytes, expected: dict[str, Any]) -> None:
    key = api.key(TENANT)
    response = post(api, key, body)
    assert (response.status_code, response.json()) == (400, expected)
    assert stored(api, key) == []
    assert quarantined(api, key) == []


def test_hostile_strings(api: Api) -> None:
    key = api.key(TENANT)
    body = json.dumps({"type": "p" * 100_000, "customerId": "c" * 257, "channel": "x" * 257})
    response = post(api, key, body)
    enum = "must be one of purchase, cart_abandon, page_view, app_open, support_call"
    problems = [
        ("type", "invalid_value", enum),
        ("customerId", "too_long", "must be at most 256 characters"),
        ("channel", "too_long", "must be at most 256 characters"),
    ]
    assert (response.status_code, response.json()) == (400, invalid(*problems))
    data = {"note": "\U0001f600" * 200_000, "zero": "\u0000"}
    response = post(api, key, json.dumps({"type": "support_call", "customerId": "C", "data": data}))
    assert response.status_code == 200, response.text
    assert stored(api, key)[0]["data"] == data
