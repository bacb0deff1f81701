"""Tenant and mode isolation, roles, and authentication, through HTTP, on every backend."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Api

MISSING_KEY = {
    "error": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
    "details": [],
}
INVALID_KEY = {"error": "invalid or revoked API key", "details": []}
WRONG_TENANT = {"error": "X-Tenant-Id names a tenant this key does not belong to", "details": []}
NO_SUCH_EVENT = {"error": "no such event", "details": []}


def accepted(response: httpx.Response, statuses: list[str] | None = None) -> list[str]:
    """Assert a whole ingest response where nothing was rejected; return the ids."""
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = statuses or ["accepted"] * len(body["results"])
    ids = [r["id"] for r in body["results"]]
    assert body == {
        "accepted": statuses.count("accepted"),
        "duplicates": statuses.count("duplicate"),
        "rejected": 0,
        "results": [{"index": i, "status": status, "id": ids[i], "errors": []} for i, status in enumerate(statuses)],
    }
    return ids


def listed(api: Api, key: str, **params: Any) -> list[dict[str, Any]]:
    response = api.client.get("/v1/events", params=params, headers=api.as_(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    assert set(body) == {"data", "next_cursor"}
    return list(body["data"])


def fetch(api: Api, key: str, event_id: str) -> httpx.Response:
    return api.client.get(f"/v1/events/{event_id}", headers=api.as_(key))


# Tenants


def test_tenant_cannot_see_or_fetch_another_tenants_events(api: Api) -> None:
    acme, globex = api.key("acme"), api.key("globex")
    event = {"type": "order", "subject": "cust_1", "idempotency_key": "order-1", "data": {"amount": 5}}
    [acme_id] = accepted(api.client.post("/v1/events", json=event, headers=api.as_(acme)))

    assert listed(api, globex) == []
    assert listed(api, globex, type="order", subject="cust_1") == []
    response = fetch(api, globex, acme_id)
    assert response.status_code == 404
    assert response.json() == NO_SUCH_EVENT

    # The same idempotency key in another tenant is another event, not a duplicate.
    [globex_id] = accepted(api.client.post("/v1/events", json=event, headers=api.as_(globex)))
    assert globex_id != acme_id
    # ...and each tenant's own repeat is a duplicate of its own event.
    accepted(api.client.post("/v1/events", json=event, headers=api.as_(acme)), ["duplicate"])
    again = api.client.post("/v1/events", json=event, headers=api.as_(globex)).json()
    assert again["results"][0]["id"] == globex_id

    [acme_event] = listed(api, acme)
    [globex_event] = listed(api, globex)
    assert (acme_event["id"], acme_event["tenant"], acme_event["mode"]) == (acme_id, "acme", "live")
    assert (globex_event["id"], globex_event["tenant"], globex_event["mode"]) == (globex_id, "globex", "live")
    assert fetch(api, acme, acme_id).json() == acme_event
    assert fetch(api, globex, globex_id).json() == globex_event
    assert fetch(api, acme, globex_id).json() == NO_SUCH_EVENT


@pytest.mark.parametrize("field", ["tenant", "mode"])
def test_event_cannot_name_its_own_tenant_or_mode(api: Api, field: str) -> None:
    key = api.key("acme", mode="test")
    response = api.client.post(
        "/v1/events", json={"type": "a", field: "globex" if field == "tenant" else "live"}, headers=api.as_(key)
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "results": [
            {
                "index": 0,
                "status": "rejected",
                "id": None,
                "errors": [
                    {"field": field, "code": "unknown_field", "message": f"Object contains unknown field `{field}`"}
                ],
            }
        ],
    }
    assert listed(api, key) == []
    assert listed(api, api.key("acme", mode="live")) == []
    assert listed(api, api.key("globex", mode="test")) == []


# Modes


def test_test_and_live_keys_see_only_their_own_mode(api: Api) -> None:
    live, test = api.key("acme", mode="live"), api.key("acme", mode="test")
    assert test.startswith("hw_test_") and live.startswith("hw_live_")
    event = {"type": "signup", "idempotency_key": "same-key"}
    [test_id] = accepted(api.client.post("/v1/events", json=event, headers=api.as_(test)))

    assert listed(api, live) == []
    assert fetch(api, live, test_id).json() == NO_SUCH_EVENT
    assert fetch(api, live, test_id).status_code == 404

    # The same idempotency key in the other mode is another event.
    [live_id] = accepted(api.client.post("/v1/events", json=event, headers=api.as_(live)))
    assert live_id != test_id

    [test_event] = listed(api, test)
    [live_event] = listed(api, live)
    assert (test_event["id"], test_event["tenant"], test_event["mode"]) == (test_id, "acme", "test")
    assert (live_event["id"], live_event["tenant"], live_event["mode"]) == (live_id, "acme", "live")
    assert fetch(api, test, live_id).json() == NO_SUCH_EVENT
    assert fetch(api, test, test_id).json() == test_event


def test_every_role_is_bound_to_its_keys_mode(api: Api) -> None:
    test_writer = api.key("acme", role="ingest", mode="test")
    live_reader, test_reader = api.key("acme", role="viewer"), api.key("acme", role="viewer", mode="test")
    [event_id] = accepted(api.client.post("/v1/events", json={"type": "t"}, headers=api.as_(test_writer)))
    assert listed(api, live_reader) == []
    assert fetch(api, live_reader, event_id).json() == NO_SUCH_EVENT
    [stored] = listed(api, test_reader)
    assert (stored["id"], stored["mode"]) == (event_id, "test")


# Roles


@dataclass
class Tenant:
    """Tenant acme with an admin, one stored event and a spare key to revoke."""

    api: Api
    admin: str
    event: dict[str, Any]
    spare_key_id: str

    def state(self) -> tuple[Any, ...]:
        """Everything a forbidden call could have changed, as the admin sees it."""
        headers = self.api.as_(self.admin)
        events = self.api.client.get("/v1/events", headers=headers).json()
        keys = self.api.client.get("/v1/keys", headers=headers).json()
        schemas = self.api.client.get("/v1/schemas", headers=headers).json()
        return events, keys, schemas


@pytest.fixture
def tenant(api: Api) -> Tenant:
    admin = api.key("acme", "admin")
    [event_id] = accepted(api.client.post("/v1/events", json={"type": "seed"}, headers=api.as_(admin)))
    event = fetch(api, admin, event_id).json()
    spare = api.client.post("/v1/keys", json={"role": "viewer", "name": "spare"}, headers=api.as_(admin))
    assert spare.status_code == 201, spare.text
    return Tenant(api, admin, event, spare.json()["id"])


def do_ingest(t: Tenant, key: str) -> httpx.Response:
    return t.api.client.post("/v1/events", json={"type": "by-role"}, headers=t.api.as_(key))


def check_ingest(t: Tenant, response: httpx.Response) -> None:
    [event_id] = accepted(response)
    assert [e["id"] for e in listed(t.api, t.admin)] == [event_id, t.event["id"]]


def check_list(t: Tenant, response: httpx.Response) -> None:
    assert response.json() == {"data": [t.event], "next_cursor": None}


def check_get(t: Tenant, response: httpx.Response) -> None:
    assert response.json() == t.event


def check_configure(t: Tenant, response: httpx.Response) -> None:
    body = response.json()
    assert body == {
        "type": "order",
        "version": 1,
        "enforcement": "soft",
        "schema": {"type": "object"},
        "created_at": body["created_at"],
    }


def check_create_key(t: Tenant, response: httpx.Response) -> None:
    body = response.json()
    fields = {"id", "key", "tenant", "role", "mode", "prefix", "name", "created_at"}
    assert set(body) == fields | {"publishable", "allowed_origins", "rate_limit"}
    assert (body["tenant"], body["role"], body["mode"], body["name"]) == ("acme", "viewer", "live", None)
    # The new key works, with its role.
    check_list(t, t.api.client.get("/v1/events", headers=t.api.as_(body["key"])))


def check_list_keys(t: Tenant, response: httpx.Response) -> None:
    keys = response.json()["data"]
    assert set(response.json()) == {"data"}
    assert t.spare_key_id in [k["id"] for k in keys]
    fields = {"id", "tenant", "role", "mode", "prefix", "name", "created_at", "revoked_at"}
    assert all(set(k) == fields | {"publishable", "allowed_origins"} for k in keys)


def check_revoke(t: Tenant, response: httpx.Response) -> None:
    body = response.json()
    assert body["id"] == t.spare_key_id and body["revoked_at"] is not None


Operation = tuple[str, int, Callable[[Tenant, str], httpx.Response], Callable[[Tenant, httpx.Response], None]]

OPERATIONS: dict[str, Operation] = {
    "ingest": ("ingest", 200, do_ingest, check_ingest),
    "list-events": ("read", 200, lambda t, k: t.api.client.get("/v1/events", headers=t.api.as_(k)), check_list),
    "get-event": (
        "read",
        200,
        lambda t, k: t.api.client.get(f"/v1/events/{t.event['id']}", headers=t.api.as_(k)),
        check_get,
    ),
    "put-schema": (
        "configure",
        201,
        lambda t, k: t.api.client.put("/v1/schemas/order", json={"schema": {"type": "object"}}, headers=t.api.as_(k)),
        check_configure,
    ),
    "create-key": (
        "admin",
        201,
        lambda t, k: t.api.client.post("/v1/keys", json={"role": "viewer"}, headers=t.api.as_(k)),
        check_create_key,
    ),
    "list-keys": ("admin", 200, lambda t, k: t.api.client.get("/v1/keys", headers=t.api.as_(k)), check_list_keys),
    "revoke-key": (
        "admin",
        200,
        lambda t, k: t.api.client.delete(f"/v1/keys/{t.spare_key_id}", headers=t.api.as_(k)),
        check_revoke,
    ),
}
ALLOWED = {
    "admin": set(OPERATIONS),
    "editor": {"ingest", "list-events", "get-event", "put-schema"},
    "ingest": {"ingest"},
    "viewer": {"list-events", "get-event"},
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("role", list(ALLOWED))
def test_role_matrix(tenant: Tenant, role: str, operation: str) -> None:
    permission, status, call, check = OPERATIONS[operation]
    key = tenant.admin if role == "admin" else tenant.api.key("acme", role)
    before = tenant.state()
    response = call(tenant, key)
    if operation in ALLOWED[role]:
        assert response.status_code == status, response.text
        check(tenant, response)
    else:
        assert response.status_code == 403, response.text
        assert response.json() == {"error": f"the {role} role may not {permission}", "details": []}
        assert tenant.state() == before


# Authentication

ENDPOINTS = [
    ("POST", "/v1/events", {"type": "a"}),
    ("GET", "/v1/events", None),
    ("GET", "/v1/events/evt_00000000000000000000000000000000", None),
    ("POST", "/v1/keys", {"role": "admin"}),
    ("GET", "/v1/keys", None),
    ("DELETE", "/v1/keys/key_00000000000000000000000000000000", None),
    ("PUT", "/v1/schemas/order", {"schema": {"type": "object"}}),
]


def unknown_key() -> str:
    return "hw_live_" + secrets.token_urlsafe(32)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(lambda key: {}, MISSING_KEY, id="no-key"),
        pytest.param(lambda key: {"Authorization": "Bearer "}, MISSING_KEY, id="empty-bearer"),
        pytest.param(lambda key: {"Authorization": f"Token {key}"}, MISSING_KEY, id="unknown-scheme"),
        pytest.param(lambda key: {"X-API-Key": ""}, MISSING_KEY, id="empty-x-api-key"),
        pytest.param(lambda key: {"Authorization": "Bearer not-a-key"}, INVALID_KEY, id="malformed"),
        pytest.param(
            lambda key: {"Authorization": "Bearer " + key.replace("hw_live_", "hw_prod_")}, INVALID_KEY, id="bad-prefix"
        ),
        pytest.param(lambda key: {"Authorization": "Bearer " + key + "x" * 300}, INVALID_KEY, id="too-long"),
        pytest.param(lambda key: {"Authorization": "Bearer " + key[:-1]}, INVALID_KEY, id="truncated"),
        pytest.param(lambda key: {"Authorization": "Bearer " + key.upper()}, INVALID_KEY, id="wrong-case"),
        pytest.param(lambda key: {"Authorization": "Bearer " + unknown_key()}, INVALID_KEY, id="unknown"),
        pytest.param(lambda key: {"X-API-Key": unknown_key()}, INVALID_KEY, id="unknown-x-api-key"),
    ],
)
def test_missing_malformed_or_unknown_key_is_401(
    api: Api,
    method: str,
    path: str,
    body: Any,
    headers: Callable[[str], dict[str, str]],
    expected: dict[str, Any],
) -> None:
    admin = api.key("acme")
    response = api.client.request(method, path, json=body, headers=headers(admin))
    assert response.status_code == 401, response.text
    assert response.json() == expected
    assert response.headers["www-authenticate"] == "Bearer"
    assert listed(api, admin) == []
    assert len(api.client.get("/v1/keys", headers=api.as_(admin)).json()["data"]) == 1


def test_key_in_x_api_key_header_works(api: Api) -> None:
    key = api.key("acme", "editor")
    [event_id] = accepted(api.client.post("/v1/events", json={"type": "a"}, headers={"X-API-Key": key}))
    response = api.client.get(f"/v1/events/{event_id}", headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == event_id
    assert [e["id"] for e in api.client.get("/v1/events", headers={"X-Api-Key": key}).json()["data"]] == [event_id]
    # The role still applies: an editor may not manage keys.
    response = api.client.get("/v1/keys", headers={"X-API-Key": key})
    assert response.status_code == 403
    assert response.json() == {"error": "the editor role may not admin", "details": []}


@pytest.mark.parametrize("other", ["globex", "ACME", "", "acme,globex"])
def test_x_tenant_id_naming_another_tenant_is_403(api: Api, other: str) -> None:
    acme = api.key("acme")
    api.key("globex")
    headers = {**api.as_(acme), "X-Tenant-Id": other}
    for method, path, body in ENDPOINTS:
        response = api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json() == WRONG_TENANT
    assert listed(api, acme) == []
    assert len(api.client.get("/v1/keys", headers=api.as_(acme)).json()["data"]) == 1


def test_x_tenant_id_matching_the_key_is_accepted(api: Api) -> None:
    acme = api.key("acme")
    headers = {**api.as_(acme), "X-Tenant-Id": "acme"}
    [event_id] = accepted(api.client.post("/v1/events", json={"type": "a"}, headers=headers))
    assert api.client.get(f"/v1/events/{event_id}", headers=headers).json()["id"] == event_id
    response = api.client.get("/v1/events", headers=headers)
    assert response.status_code == 200
    assert [e["id"] for e in response.json()["data"]] == [event_id]
    response = api.client.get("/v1/keys", headers={"X-API-Key": acme, "X-Tenant-Id": "acme"})
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1
