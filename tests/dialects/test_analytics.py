"""Seed 001: POST /ingest, one strictly typed analytics event, with the document's own examples."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Api
from tests.dialects import (
    DEEP,
    INVALID_KEY,
    UNAUTHENTICATED,
    bare,
    canonical,
    nested,
    quarantine_item,
    quarantined,
    stored,
)

PATH = "/ingest"

# The document's example request body (the curl -d argument), verbatim.
DOC_BODY = """{
    "event_id": "evt_123456789",
    "event_type": "click",
    "event_name": "button_click",
    "event_time": "2025-09-17T10:00:00Z",
    "user_id": "usr_987654321",
    "session_id": "sess_123456789",
    "page_name": "checkout",
    "element_id": "submit_button",
    "device_type": "mobile",
    "platform": "ios",
    "app_version": "2.1.0",
    "network_type": "wifi"
  }"""
# The document's success and error responses, verbatim.
DOC_SUCCESS = """{
  "status": "success",
  "eventId": "evt_123456789"
}"""
DOC_ERROR = """{
  "error": "Invalid event",
  "details": [
    {
      "field": "event_time",
      "message": "must be a valid ISO 8601 datetime",
      "code": "validation.format"
    }
  ]
}"""
REQUIRED_ONLY = {
    "event_id": "e-1",
    "event_type": "view",
    "event_name": "home_view",
    "event_time": "2025-09-17T12:00:00+02:00",
    "user_id": "u-1",
    "session_id": "s-1",
    "page_name": "home",
}


def post(api: Api, key: str, body: str | bytes, headers: dict[str, str] | None = None) -> Any:
    return api.client.post(PATH, content=body, headers={"X-API-Key": key, **(headers or {})})


def invalid(*details: tuple[str, str, str]) -> dict[str, Any]:
    return {"error": "Invalid event", "details": [{"field": f, "code": c, "message": m} for f, c, m in details]}


def reasons(*details: tuple[str, str, str]) -> list[dict[str, str]]:
    return list(invalid(*details)["details"])


def test_documented_request_and_response(api: Api) -> None:
    key = api.key()
    response = post(api, key, DOC_BODY)
    assert (response.status_code, response.json()) == (200, json.loads(DOC_SUCCESS))
    [event] = stored(api, key)
    assert event == canonical(
        event["id"],
        "click",
        subject="usr_987654321",
        channel="ios",
        time="2025-09-17T10:00:00Z",
        key="evt_123456789",
        data={
            "event_name": "button_click",
            "session_id": "sess_123456789",
            "page_name": "checkout",
            "element_id": "submit_button",
            "device_type": "mobile",
            "app_version": "2.1.0",
            "network_type": "wifi",
        },
        seq=1,
    )
    assert event["id"].startswith("evt_") and event["id"] != "evt_123456789"


def test_resending_an_event_id_is_a_no_op(api: Api) -> None:
    key = api.key()
    assert post(api, key, DOC_BODY).json() == json.loads(DOC_SUCCESS)
    [first] = stored(api, key)
    changed = json.loads(DOC_BODY) | {"page_name": "cart"}
    response = post(api, key, json.dumps(changed))
    assert (response.status_code, response.json()) == (200, json.loads(DOC_SUCCESS))
    assert stored(api, key) == [first]


def test_documented_error(api: Api) -> None:
    key = api.key()
    body = DOC_BODY.replace('"2025-09-17T10:00:00Z"', '"17/09/2025 10:00"')
    response = post(api, key, body)
    assert (response.status_code, response.json()) == (400, json.loads(DOC_ERROR))
    assert stored(api, key) == []
    assert quarantined(api, key) == [
        quarantine_item(
            "analytics", reasons(("event_time", "validation.format", "must be a valid ISO 8601 datetime")), body
        )
    ]


def test_every_problem_is_reported(api: Api) -> None:
    key = api.key()
    body = json.dumps(
        {
            "event_id": 123,
            "event_name": None,
            "event_time": 1726567200,
            "user_id": "",
            "session_id": ["s"],
            "page_name": "checkout",
            "device_type": "watch",
            "platform": "IOS",
            "network_type": "5g",
            "content": "text",
            "experiments": ["exp_a", 2, None],
            "extras": [],
            "utm_source": "mail",
            "data": {},
        }
    )
    response = post(api, key, body)
    expected = [
        ("event_id", "validation.type", "must be a string, got number"),
        ("event_type", "validation.required", "is required"),
        ("event_name", "validation.required", "is required"),
        ("event_time", "validation.type", "must be a string, got number"),
        ("user_id", "validation.required", "must not be empty"),
        ("session_id", "validation.type", "must be a string, got array"),
        ("device_type", "validation.enum", "must be one of mobile, desktop, tablet"),
        ("platform", "validation.enum", "must be one of ios, android, web"),
        ("network_type", "validation.enum", "must be one of wifi, cellular, unknown"),
        ("content", "validation.type", "must be an object, got string"),
        ("experiments.1", "validation.type", "must be a string, got number"),
        ("experiments.2", "validation.type", "must be a string, got null"),
        ("extras", "validation.type", "must be an object, got array"),
        ("utm_source", "validation.unknown_field", "unknown field"),
        ("data", "validation.unknown_field", "unknown field"),  # the client's own field, not the body
    ]
    assert (response.status_code, response.json()) == (400, invalid(*expected))
    assert quarantined(api, key) == [quarantine_item("analytics", reasons(*expected), body)]


def test_enums_and_app_version_are_optional_and_null_is_absent(api: Api) -> None:
    key = api.key()
    body = REQUIRED_ONLY | {"device_type": None, "platform": None, "referrer": None, "app_version": None}
    response = post(api, key, json.dumps(body))
    assert (response.status_code, response.json()) == (200, {"status": "success", "eventId": "e-1"})
    [event] = stored(api, key)
    assert event == canonical(
        event["id"],
        "view",
        subject="u-1",
        time="2025-09-17T10:00:00Z",
        key="e-1",
        data={"event_name": "home_view", "session_id": "s-1", "page_name": "home"},
        seq=1,
    )


def test_every_optional_field_is_kept_in_data(api: Api) -> None:
    key = api.key()
    optional = {
        "element_id": "buy",
        "referrer": "https://example.com/",
        "device_type": "tablet",
        "platform": "android",
        "app_version": "3.0",
        "network_type": "unknown",
        "content": {"id": "c1"},
        "behavior": {"scroll": 0.5},
        "performance": {"ttfb_ms": 120},
        "location": {"country": "DE"},
        "commerce": {"value": 9.99, "currency": "EUR"},
        "interaction": {"kind": "tap"},
        "experiments": ["exp_a", "exp_b"],
        "extras": {"anything": [1, {"nested": True}]},
    }
    assert post(api, key, json.dumps(REQUIRED_ONLY | optional)).status_code == 200
    [event] = stored(api, key)
    data = {"event_name": "home_view", "session_id": "s-1", "page_name": "home"} | optional
    del data["platform"]
    assert event["channel"] == "android"
    assert event["data"] == data
    assert list(event["data"]) == [k for k in REQUIRED_ONLY | optional if k in data]  # the client's order


def test_authentication(api: Api) -> None:
    response = api.client.post(PATH, content=DOC_BODY)
    assert (response.status_code, response.json()) == (401, UNAUTHENTICATED)
    response = post(api, "your_api_key", DOC_BODY)
    assert (response.status_code, response.json()) == (401, INVALID_KEY)
    response = post(api, api.key(role="viewer"), DOC_BODY)
    assert (response.status_code, response.json()) == (403, bare("the viewer role may not ingest"))
    key = api.key(role="ingest")
    assert post(api, key, DOC_BODY).json() == json.loads(DOC_SUCCESS)
    response = api.client.post(PATH, content=DOC_BODY, headers=api.as_(api.key()))  # Bearer works too
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(
            b"hello",
            ("validation.format", "request body is not valid JSON: JSON is malformed: invalid character (byte 0)"),
            id="not-json",
        ),
        pytest.param(
            DOC_BODY[:-5],
            ("validation.format", "request body is not valid JSON: Input data was truncated"),
            id="truncated",
        ),
        pytest.param(b"", ("validation.required", "request body is empty: send a JSON object"), id="empty"),
        pytest.param(
            b"[" + DOC_BODY.encode() + b"]", ("validation.type", "request body must be a JSON object"), id="array"
        ),
        pytest.param(b'"event"', ("validation.type", "request body must be a JSON object"), id="string"),
        pytest.param(
            '{"extras": {"deep": ' + nested(DEEP) + "}}",
            ("validation.format", "JSON nests deeper than 64 levels"),
            id="deep-nesting",
        ),
        pytest.param(
            b'{"event_id": "\xc3"}',
            ("validation.format", "request body is not valid UTF-8: invalid continuation byte at byte 14"),
            id="bad-utf8",
        ),
    ],
)
def test_unreadable_bodies(api: Api, body: str | bytes, detail: tuple[str, str]) -> None:
    key = api.key()
    response = post(api, key, body)
    assert (response.status_code, response.json()) == (400, invalid(("", *detail)))
    assert stored(api, key) == []
    assert quarantined(api, key) == []


def test_hostile_strings(api: Api) -> None:
    key = api.key()
    body = json.dumps(REQUIRED_ONLY | {"event_id": "e" * 257, "event_type": "t" * 100_000, "user_id": "u" * 257})
    response = post(api, key, body)
    expected = [
        ("event_id", "validation.format", "must be at most 256 characters"),
        ("event_type", "validation.format", "must be at most 128 characters"),
        ("user_id", "validation.format", "must be at most 256 characters"),
    ]
    assert (response.status_code, response.json()) == (400, invalid(*expected))
    response = post(api, key, json.dumps(REQUIRED_ONLY | {"event_time": "2" * 10_000}))
    assert response.json() == invalid(("event_time", "validation.format", "must be a valid ISO 8601 datetime"))
    extras = {"blob": "\u00e9" * 1_000_000, "nul": "\u0000"}
    response = post(api, key, json.dumps(REQUIRED_ONLY | {"extras": extras}, ensure_ascii=False).encode())
    assert response.status_code == 200, response.text
    [event] = stored(api, key)
    assert event["data"]["extras"] == extras
