"""`/v1/keys`: create, list, revoke, through HTTP, on every backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.keys import KEY_PATTERN
from tests.conftest import Api

INVALID_KEY = {"error": "invalid or revoked API key", "details": []}
NO_SUCH_KEY = {"error": "no such active key", "details": []}
RECORD_FIELDS = {
    "id", "tenant", "role", "mode", "prefix", "name", "created_at", "revoked_at", "publishable", "allowed_origins",
}  # fmt: skip


def listed(created: dict[str, Any]) -> dict[str, Any]:
    """A created key as a listing shows it: no secret, and no rate limit (read at
    /v1/keys/{id}/rate-limit); `revoked_at` is added by the caller."""
    return {k: v for k, v in created.items() if k not in ("key", "rate_limit")}


def create(api: Api, admin: str, body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/keys", json=body, headers=api.as_(admin))
    assert response.status_code == 201, response.text
    return dict(response.json())


def list_keys(api: Api, admin: str) -> list[dict[str, Any]]:
    response = api.client.get("/v1/keys", headers=api.as_(admin))
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"data"}
    return list(response.json()["data"])


def recent(timestamp: str) -> bool:
    """An RFC 3339 UTC timestamp (`Z`) from the last minute."""
    age = datetime.now(UTC) - datetime.fromisoformat(timestamp)
    return timestamp.endswith("Z") and timedelta(0) <= age < timedelta(minutes=1)


def poll_until_401(api: Api, key: str, within: float) -> float:
    """Seconds until `key` gets 401 on GET /v1/events; fails if that takes longer than `within`."""
    started = time.monotonic()
    while True:
        response = api.client.get("/v1/events", headers=api.as_(key))
        elapsed = time.monotonic() - started
        if response.status_code == 401:
            assert response.json() == INVALID_KEY
            return elapsed
        assert response.status_code == 200, response.text
        assert elapsed <= within, f"revoked key still accepted after {elapsed:.2f}s"
        time.sleep(0.02)


@pytest.mark.parametrize(("mode", "name"), [("live", "ci pipeline"), ("test", None)])
def test_create_returns_the_key_once(api: Api, mode: str, name: str | None) -> None:
    admin = api.key("acme")
    body: dict[str, Any] = {"role": "ingest", "mode": mode}
    if name is not None:
        body["name"] = name
    created = create(api, admin, body)
    key = created["key"]
    assert created == {
        "id": created["id"],
        "key": key,
        "tenant": "acme",
        "role": "ingest",
        "mode": mode,
        "prefix": key[:12],
        "name": name,
        "created_at": created["created_at"],
        "rate_limit": None,
        "publishable": False,
        "allowed_origins": [],
    }
    assert created["id"].startswith("key_") and len(created["id"]) == 36
    assert KEY_PATTERN.fullmatch(key) and key.startswith(f"hw_{mode}_")
    assert recent(created["created_at"])

    # The key works at once, with its role and mode.
    response = api.client.post("/v1/events", json={"type": "a"}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    stored = api.client.get("/v1/events", headers=api.as_(api.key("acme", "viewer", mode))).json()["data"]
    assert [(e["id"], e["mode"]) for e in stored] == [(response.json()["results"][0]["id"], mode)]
    response = api.client.get("/v1/events", headers=api.as_(key))
    assert response.status_code == 403
    assert response.json() == {"error": "the ingest role may not read", "details": []}

    # The secret is never shown again.
    listing = api.client.get("/v1/keys", headers=api.as_(admin))
    assert key not in listing.text
    [record] = [k for k in listing.json()["data"] if k["id"] == created["id"]]
    assert record == listed(created) | {"revoked_at": None}


def test_mode_defaults_to_the_creating_keys_mode(api: Api) -> None:
    live_admin, test_admin = api.key("acme"), api.key("acme", mode="test")
    from_live = create(api, live_admin, {"role": "viewer"})
    from_test = create(api, test_admin, {"role": "viewer"})
    assert (from_live["mode"], from_live["key"][:8], from_live["name"]) == ("live", "hw_live_", None)
    assert (from_test["mode"], from_test["key"][:8], from_test["name"]) == ("test", "hw_test_", None)


def test_list_shows_every_key_of_the_tenant_without_secrets(api: Api) -> None:
    admin = api.key("acme")
    other_tenant = api.key("globex")
    created = [
        create(api, admin, {"role": role, "mode": mode, "name": f"{role}-{mode}"})
        for role, mode in [("admin", "live"), ("editor", "test"), ("ingest", "live"), ("viewer", "test")]
    ]
    response = api.client.get("/v1/keys", headers=api.as_(admin))
    assert response.status_code == 200, response.text
    keys = response.json()["data"]
    assert all(set(k) == RECORD_FIELDS for k in keys)
    for made in created:
        assert made["key"] not in response.text
    # The admin key made straight in the store comes first, then the four, oldest first.
    assert len(keys) == 5
    first = keys[0]
    assert first == {
        "id": first["id"],
        "tenant": "acme",
        "role": "admin",
        "mode": "live",
        "prefix": admin[:12],
        "name": None,
        "created_at": first["created_at"],
        "revoked_at": None,
        "publishable": False,
        "allowed_origins": [],
    }
    assert keys[1:] == [listed(made) | {"revoked_at": None} for made in created]
    assert other_tenant[:12] not in response.text

    [globex] = list_keys(api, other_tenant)
    assert (globex["tenant"], globex["prefix"]) == ("globex", other_tenant[:12])


def test_revoke_marks_the_key_and_it_stops_working(api: Api) -> None:
    admin = api.key("acme")
    created = create(api, admin, {"role": "editor", "name": "to revoke"})
    key = created["key"]
    assert api.client.get("/v1/events", headers=api.as_(key)).status_code == 200

    response = api.client.delete(f"/v1/keys/{created['id']}", headers=api.as_(admin))
    assert response.status_code == 200, response.text
    revoked = response.json()
    assert revoked == listed(created) | {"revoked_at": revoked["revoked_at"]}
    assert recent(revoked["revoked_at"])
    assert [k for k in list_keys(api, admin) if k["id"] == created["id"]] == [revoked]

    for call in (
        lambda: api.client.get("/v1/events", headers=api.as_(key)),
        lambda: api.client.post("/v1/events", json={"type": "a"}, headers=api.as_(key)),
        lambda: api.client.get("/v1/events", headers={"X-API-Key": key}),
    ):
        response = call()
        assert response.status_code == 401
        assert response.json() == INVALID_KEY
    assert api.client.get("/v1/events", headers=api.as_(admin)).json()["data"] == []

    # Revoking again: it is no longer an active key.
    response = api.client.delete(f"/v1/keys/{created['id']}", headers=api.as_(admin))
    assert response.status_code == 404
    assert response.json() == NO_SUCH_KEY


def test_revoked_key_gets_401_within_one_second_on_the_same_app(api: Api) -> None:
    admin = api.key("acme")
    created = create(api, admin, {"role": "viewer"})
    # Used first, so the running app has it in its auth cache.
    for _ in range(3):
        assert api.client.get("/v1/events", headers=api.as_(created["key"])).status_code == 200
    response = api.client.delete(f"/v1/keys/{created['id']}", headers=api.as_(admin))
    assert response.status_code == 200, response.text
    poll_until_401(api, created["key"], within=1.0)


def test_key_revoked_elsewhere_gets_401_within_one_second(api: Api) -> None:
    """Revoked through another app on the same store (another process, or the CLI): the
    running app's auth cache (Settings.key_cache_seconds) must not keep the key alive."""
    admin = api.key("acme")
    created = create(api, admin, {"role": "viewer"})
    for _ in range(3):
        assert api.client.get("/v1/events", headers=api.as_(created["key"])).status_code == 200
    with TestClient(create_app(api.settings)) as elsewhere:
        response = elsewhere.delete(f"/v1/keys/{created['id']}", headers=api.as_(admin))
        assert response.status_code == 200, response.text
    poll_until_401(api, created["key"], within=1.0)
    assert api.client.get("/v1/events", headers=api.as_(admin)).status_code == 200


@pytest.mark.parametrize(
    "key_id",
    ["key_00000000000000000000000000000000", "nope", "%20", "key_" + "f" * 300],
)
def test_revoke_unknown_key_is_404(api: Api, key_id: str) -> None:
    admin = api.key("acme")
    before = list_keys(api, admin)
    response = api.client.delete(f"/v1/keys/{key_id}", headers=api.as_(admin))
    assert response.status_code == 404
    assert response.json() == NO_SUCH_KEY
    assert list_keys(api, admin) == before


def test_revoke_another_tenants_key_is_404_and_leaves_it_working(api: Api) -> None:
    acme, globex = api.key("acme"), api.key("globex")
    victim = create(api, globex, {"role": "viewer"})
    response = api.client.delete(f"/v1/keys/{victim['id']}", headers=api.as_(acme))
    assert response.status_code == 404
    assert response.json() == NO_SUCH_KEY
    assert api.client.get("/v1/events", headers=api.as_(victim["key"])).status_code == 200
    assert [k["revoked_at"] for k in list_keys(api, globex) if k["id"] == victim["id"]] == [None]
    assert victim["id"] not in [k["id"] for k in list_keys(api, acme)]


def invalid(field: str, code: str, message: str) -> dict[str, Any]:
    return {"error": "request body is not valid", "details": [{"field": field, "code": code, "message": message}]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b'{"role": "owner"}', invalid("role", "invalid", "Invalid enum value 'owner'"), id="bad-role"),
        pytest.param(b'{"role": "Admin"}', invalid("role", "invalid", "Invalid enum value 'Admin'"), id="role-case"),
        pytest.param(b'{"role": 1}', invalid("role", "invalid_type", "Expected `str`, got `int`"), id="role-int"),
        pytest.param(b'{"role": null}', invalid("role", "invalid_type", "Expected `str`, got `null`"), id="role-null"),
        pytest.param(b"{}", invalid("role", "required", "Object missing required field `role`"), id="no-role"),
        pytest.param(
            b'{"name": "x"}', invalid("role", "required", "Object missing required field `role`"), id="only-name"
        ),
        pytest.param(
            b'{"role": "viewer", "tenant": "globex"}',
            invalid("tenant", "unknown_field", "Object contains unknown field `tenant`"),
            id="unknown-field-tenant",
        ),
        pytest.param(
            b'{"role": "viewer", "expires": 3600}',
            invalid("expires", "unknown_field", "Object contains unknown field `expires`"),
            id="unknown-field",
        ),
        pytest.param(
            b'{"role": "viewer", "mode": "prod"}',
            invalid("mode", "invalid", "Invalid enum value 'prod'"),
            id="bad-mode",
        ),
        pytest.param(
            b'{"role": "viewer", "name": 5}',
            invalid("name", "invalid_type", "Expected `str | null`, got `int`"),
            id="name-int",
        ),
        pytest.param(
            b'{"role": "viewer", "name": "' + b"n" * 101 + b'"}',
            invalid("name", "too_long", "Expected `str` of length <= 100"),
            id="name-101",
        ),
        pytest.param(b'["viewer"]', invalid("", "invalid_type", "Expected `object`, got `array`"), id="array"),
        pytest.param(b'"viewer"', invalid("", "invalid_type", "Expected `object`, got `str`"), id="string"),
        pytest.param(
            b"role=viewer",
            {
                "error": "request body is not valid JSON: JSON is malformed: invalid character (byte 0)",
                "details": [
                    {
                        "field": "",
                        "code": "invalid_json",
                        "message": "request body is not valid JSON: JSON is malformed: invalid character (byte 0)",
                    }
                ],
            },
            id="not-json",
        ),
        pytest.param(
            b'{"role": "viewer"',
            {
                "error": "request body is not valid JSON: Input data was truncated",
                "details": [
                    {
                        "field": "",
                        "code": "invalid_json",
                        "message": "request body is not valid JSON: Input data was truncated",
                    }
                ],
            },
            id="truncated-json",
        ),
        pytest.param(
            b"",
            {
                "error": "request body is empty: send a JSON object",
                "details": [{"field": "", "code": "required", "message": "request body is empty: send a JSON object"}],
            },
            id="empty",
        ),
    ],
)
def test_bad_create_body_is_400_with_field_errors(api: Api, body: bytes, expected: dict[str, Any]) -> None:
    admin = api.key("acme")
    before = list_keys(api, admin)
    response = api.client.post("/v1/keys", content=body, headers=api.as_(admin))
    assert response.status_code == 400, response.text
    assert response.json() == expected
    assert list_keys(api, admin) == before


def test_key_endpoints_need_an_admin(api: Api) -> None:
    target = create(api, api.key("acme"), {"role": "viewer"})
    for role in ("editor", "ingest", "viewer"):
        key = api.key("acme", role)
        for response in (
            api.client.post("/v1/keys", json={"role": "admin"}, headers=api.as_(key)),
            api.client.get("/v1/keys", headers=api.as_(key)),
            api.client.delete(f"/v1/keys/{target['id']}", headers=api.as_(key)),
        ):
            assert response.status_code == 403
            assert response.json() == {"error": f"the {role} role may not admin", "details": []}
    assert api.client.get("/v1/events", headers=api.as_(target["key"])).status_code == 200


def test_a_test_admin_manages_only_test_keys(api: Api) -> None:
    """A test key must not be a way to a live one: it cannot create, see or revoke live keys."""
    live_admin, test_admin = api.key("acme"), api.key("acme", mode="test")
    refused = api.client.post("/v1/keys", json={"role": "ingest", "mode": "live"}, headers=api.as_(test_admin))
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "a test-mode key may only manage test-mode keys", "details": []},
    )
    test_key = api.client.post("/v1/keys", json={"role": "ingest"}, headers=api.as_(test_admin)).json()
    live_key = api.client.post("/v1/keys", json={"role": "ingest"}, headers=api.as_(live_admin)).json()
    seen_by_test = {k["id"]: k["mode"] for k in api.client.get("/v1/keys", headers=api.as_(test_admin)).json()["data"]}
    seen_by_live = {k["id"]: k["mode"] for k in api.client.get("/v1/keys", headers=api.as_(live_admin)).json()["data"]}
    assert set(seen_by_test.values()) == {"test"} and test_key["id"] in seen_by_test
    assert {test_key["id"], live_key["id"]} <= set(seen_by_live)
    hidden = api.client.delete(f"/v1/keys/{live_key['id']}", headers=api.as_(test_admin))
    assert (hidden.status_code, hidden.json()) == (404, {"error": "no such active key", "details": []})
    assert api.client.post("/v1/events", json={"type": "t"}, headers=api.as_(live_key["key"])).status_code == 200
    assert api.client.delete(f"/v1/keys/{test_key['id']}", headers=api.as_(live_admin)).status_code == 200
