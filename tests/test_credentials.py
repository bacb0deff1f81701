"""Where a request's API key and tenant come from: one key, however many places name it."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.conftest import Api


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def conflict(places: str, field: str) -> dict[str, Any]:
    message = f"{places} carry different API keys: send one key"
    return {"error": message, "details": [{"field": field, "code": "conflict", "message": message}]}


TWO_TENANT_HEADERS = {
    "error": "X-Tenant-Id is sent twice: send it once",
    "details": [{"field": "X-Tenant-Id", "code": "duplicate", "message": "X-Tenant-Id is sent twice: send it once"}],
}


def stored(api: Api, key: str) -> int:
    response = api.client.get("/v1/events", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return len(response.json()["data"])


def authenticated_operations(api: Api) -> list[tuple[str, str]]:
    """Every (method, path) of the API that takes a key, path parameters filled in."""
    document = api.client.get("/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if operation.get("security", document.get("security")):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return found


def test_two_different_keys_are_refused_on_every_authenticated_route(api: Api) -> None:
    """Both keys are valid admin keys of the tenant, so the 400 can only come from the ambiguity,
    and it comes before anything else the route would check."""
    first, second = api.key(), api.key()
    headers = [("Authorization", f"Bearer {first}"), ("X-API-Key", second)]
    operations = authenticated_operations(api)
    assert len(operations) > 40 and ("POST", "/v1/events") in operations and ("POST", "/v1/batch") in operations
    for method, path in operations:
        response = api.client.request(method, path, headers=headers)
        assert (method, path, response.status_code, response.json()) == (
            method,
            path,
            400,
            conflict("Authorization and X-API-Key", "X-API-Key"),
        )


BEARER_A, BASIC_A, API_KEY_A = ("Authorization", "Bearer {a}"), ("Authorization", "{basic_a}"), ("X-API-Key", "{a}")
BEARER_B, API_KEY_B = ("Authorization", "Bearer {b}"), ("X-API-Key", "{b}")


@pytest.mark.parametrize(
    ("sent", "places", "field"),
    [
        ([BEARER_A, API_KEY_B], "Authorization and X-API-Key", "X-API-Key"),
        ([API_KEY_B, BEARER_A], "X-API-Key and Authorization", "Authorization"),
        ([BEARER_A, BEARER_B], "two Authorization headers", "Authorization"),
        ([BASIC_A, BEARER_B], "two Authorization headers", "Authorization"),
        ([API_KEY_A, API_KEY_B], "two X-API-Key headers", "X-API-Key"),
        ([BEARER_A, API_KEY_A, API_KEY_B], "Authorization and X-API-Key", "X-API-Key"),
    ],
)
def test_native_ingest_with_two_different_keys_is_a_400_and_stores_nothing(
    api: Api, sent: list[tuple[str, str]], places: str, field: str
) -> None:
    a, b = api.key(), api.key()
    headers = [(name, value.format(a=a, b=b, basic_a=basic(a))) for name, value in sent]
    response = api.client.post("/v1/events", json={"type": "order"}, headers=headers)
    assert (response.status_code, response.json()) == (400, conflict(places, field))
    assert stored(api, a) == 0


def test_the_same_key_in_several_places_is_one_key(api: Api) -> None:
    key = api.key()
    for headers in (
        [("Authorization", f"Bearer {key}"), ("X-API-Key", key)],
        [("Authorization", basic(key)), ("Authorization", f"Bearer {key}"), ("X-API-Key", key)],
        [("X-API-Key", key), ("X-API-Key", f" {key} ")],
        # An empty credential names no key, so it conflicts with none.
        [("Authorization", "Bearer "), ("X-API-Key", key)],
    ):
        response = api.client.post("/v1/events", json={"type": "order"}, headers=headers)
        assert (response.status_code, response.json()["accepted"]) == (200, 1)
    assert stored(api, key) == 4


@pytest.mark.parametrize("tenants", [("acme", "acme"), ("acme", "other")])
def test_two_tenant_headers_are_a_400(api: Api, tenants: tuple[str, str]) -> None:
    key = api.key("acme")
    headers = [("Authorization", f"Bearer {key}"), *(("X-Tenant-Id", t) for t in tenants)]
    for method, path in (("POST", "/v1/events"), ("GET", "/v1/events"), ("POST", "/v1/track")):
        response = api.client.request(method, path, json={"type": "order"}, headers=headers)
        assert (method, path, response.status_code, response.json()) == (method, path, 400, TWO_TENANT_HEADERS)
    single = api.client.get("/v1/events", headers=[("Authorization", f"Bearer {key}"), ("X-Tenant-Id", "acme")])
    assert single.status_code == 200, single.text


TRACK = {"userId": "u1", "event": "Order Completed", "messageId": "m-1"}
BATCH = {"batch": [TRACK | {"type": "track"}]}


def segment(api: Api, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    return api.client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize(("path", "body"), [("/v1/track", TRACK), ("/v1/batch", BATCH)])
def test_segment_write_key_in_the_body_must_match_the_header_key(api: Api, path: str, body: dict[str, Any]) -> None:
    key, other = api.key(), api.key()
    wrong = {**body, "writeKey": other}
    refused = [
        ({"Authorization": basic(key)}, wrong, conflict("Authorization and writeKey", "writeKey")),
        ({"X-API-Key": key}, wrong, conflict("X-API-Key and writeKey", "writeKey")),
        ({"Authorization": basic(key), "X-API-Key": other}, body, conflict("Authorization and X-API-Key", "X-API-Key")),
    ]
    for headers, sent, error in refused:
        response = segment(api, path, sent, headers)
        assert (response.status_code, response.json()) == (400, error)
    assert stored(api, key) == 0

    accepted = [({"Authorization": basic(key)}, {**body, "writeKey": key}), ({}, {**body, "writeKey": key})]
    for headers, sent in accepted:
        response = segment(api, path, sent, headers)
        assert response.status_code == 200, response.text
    assert stored(api, key) == 1  # the second is a duplicate of the first (same messageId)
