"""The audit log: every administrative change leaves one entry with the acting key's id, listed
newest first and paged by cursor; no tenant sees another's, a test-mode admin sees test-mode
entries only, and no entry holds a secret."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


def call(api: Api, key: str, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    response = api.client.request(method, path, json=body, headers=api.as_(key))
    assert response.status_code == status, response.text
    return response.json()


def new_key(api: Api, admin: str, role: str, mode: str = "live") -> dict[str, Any]:
    return dict(call(api, admin, "POST", "/v1/keys", {"role": role, "mode": mode}, 201))


def audit(api: Api, key: str, **params: Any) -> Any:
    response = api.client.get("/v1/audit", params=params, headers=api.as_(key))
    return response.status_code, response.json()


def every_change(api: Api, admin: dict[str, Any], editor: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """One change of every kind; the (action, key id, resource id) each should leave, in order."""
    a, e = admin["key"], editor["key"]
    done: list[tuple[str, str, str | None]] = []

    def did(action: str, by: dict[str, Any], resource: str | None) -> None:
        done.append((action, by["id"], resource))

    schema = {"schema": {"type": "object"}, "enforcement": "strict"}
    call(api, e, "PUT", "/v1/schemas/order", schema, 201)
    did("schema.update", editor, "order")
    rule = {"name": "t", "event_types": ["purchase"], "action": {"type": "award_points", "config": {"points": 1}}}
    trigger = call(api, e, "POST", "/v1/triggers", rule, 201)["id"]
    did("trigger.create", editor, trigger)
    call(api, e, "PATCH", f"/v1/triggers/{trigger}", {"name": "renamed"})
    did("trigger.update", editor, trigger)
    call(api, e, "DELETE", f"/v1/triggers/{trigger}")
    did("trigger.delete", editor, trigger)
    call(api, e, "PUT", "/v1/type-mappings", {"mappings": {"purchase": ["order"]}})
    did("type_mappings.update", editor, None)
    hook = call(
        api, e, "POST", "/v1/webhooks", {"url": "https://hooks.example.com/in", "subscriptions": ["event.*"]}, 201
    )
    did("webhook.create", editor, hook["id"])
    call(api, e, "PATCH", f"/v1/webhooks/{hook['id']}", {"enabled": False})
    did("webhook.update", editor, hook["id"])
    rotated = call(api, e, "POST", f"/v1/webhooks/{hook['id']}/rotate")
    did("webhook.rotate", editor, hook["id"])
    call(api, e, "DELETE", f"/v1/webhooks/{hook['id']}")
    did("webhook.delete", editor, hook["id"])
    call(api, e, "POST", "/v1/badges", {"key": "gold", "name": "Gold"}, 201)
    did("badge.create", editor, "gold")
    call(api, e, "PATCH", "/v1/badges/gold", {"name": "Golden"})
    did("badge.update", editor, "gold")
    challenge = {"name": "c", "fact_type": "custom.purchase", "metric": {"count": True}, "target": 2}
    challenge_id = call(api, e, "POST", "/v1/challenges", challenge, 201)["id"]
    did("challenge.create", editor, challenge_id)
    call(api, e, "PATCH", f"/v1/challenges/{challenge_id}", {"target": 3})
    did("challenge.update", editor, challenge_id)
    call(api, e, "DELETE", f"/v1/challenges/{challenge_id}")
    did("challenge.delete", editor, challenge_id)
    call(api, e, "DELETE", "/v1/badges/gold")
    did("badge.delete", editor, "gold")
    call(api, e, "PUT", "/v1/settings", {"timezone": "Europe/Berlin", "levels": [0, 10]})
    did("settings.update", editor, None)
    call(api, a, "PUT", "/v1/settings/retention", {"days": 30})
    did("retention.update", admin, None)
    call(api, a, "DELETE", "/v1/subjects/alice")
    did("erasure.subject", admin, "alice")
    call(api, a, "POST", "/v1/erasures", {"from": "2026-01-01", "to": "2026-02-01"})
    did("erasure.range", admin, None)
    call(api, a, "DELETE", f"/v1/keys/{editor['id']}")
    did("key.revoke", admin, editor["id"])
    # What an entry must never hold: the keys themselves and every webhook secret shown.
    done.append(("secrets", a, " ".join([a, e, hook["secret"], rotated["secret"]])))
    return done


def test_every_change_leaves_one_entry_with_the_key_that_made_it(api: Api) -> None:
    bootstrap = api.key()
    admin = new_key(api, bootstrap, "admin")
    [bootstrap_id] = [k["id"] for k in call(api, bootstrap, "GET", "/v1/keys")["data"] if k["id"] != admin["id"]]
    editor = new_key(api, admin["key"], "editor")
    *done, (_, _, secrets) = every_change(api, admin, editor)
    expected = [
        ("key.create", bootstrap_id, admin["id"]),
        ("key.create", admin["id"], editor["id"]),
        *done,
    ]

    status, body = audit(api, admin["key"])

    assert status == 200 and body["next_cursor"] is None
    entries = body["data"]
    assert [(x["action"], x["key_id"], x["resource_id"]) for x in entries] == expected[::-1]
    assert [x["resource_type"] for x in entries] == [action.split(".")[0] for action, _, _ in expected[::-1]]
    assert {(x["tenant"], x["mode"]) for x in entries} == {("acme", "live")}
    assert [x["at"] for x in entries] == sorted((x["at"] for x in entries), reverse=True)
    by_action = {x["action"]: x["summary"] for x in entries}
    assert by_action["key.create"] == {"role": "admin", "mode": "live", "name": None}
    assert by_action["schema.update"] == {"version": 1}
    assert by_action["webhook.update"] == {"enabled": False}
    assert by_action["retention.update"] == {"days": 30}
    assert by_action["erasure.range"] == {"from": "2026-01-01T00:00:00Z", "to": "2026-02-02T00:00:00Z", "events": 0}
    listing = api.client.get("/v1/audit", headers=api.as_(admin["key"])).text
    for secret in secrets.split():
        assert secret not in listing
    assert "whsec_" not in listing and "hw_live_" not in listing

    # Pages of 4 make up the same list, newest first.
    paged: list[Any] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = audit(api, admin["key"], **params)[1]
        paged += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == entries


def test_no_tenant_sees_another_and_a_test_key_sees_test_entries_only(api: Api) -> None:
    acme, globex = api.key(), api.key(tenant="globex")
    test_admin = new_key(api, acme, "admin", mode="test")
    call(api, acme, "POST", "/v1/badges", {"key": "gold", "name": "Gold"}, 201)
    call(api, test_admin["key"], "POST", "/v1/badges", {"key": "test-gold", "name": "Gold"}, 201)

    assert audit(api, globex) == (200, {"data": [], "next_cursor": None})
    call(api, globex, "POST", "/v1/badges", {"key": "g", "name": "G"}, 201)
    assert [x["resource_id"] for x in audit(api, globex)[1]["data"]] == ["g"]
    live = [(x["mode"], x["resource_id"]) for x in audit(api, acme)[1]["data"]]
    assert live == [("test", "test-gold"), ("live", "gold"), ("live", test_admin["id"])]
    assert [(x["mode"], x["resource_id"]) for x in audit(api, test_admin["key"])[1]["data"]] == [("test", "test-gold")]


def test_only_admins_read_the_audit_log_and_bad_pages_are_400(api: Api) -> None:
    admin = api.key()
    for role in ("editor", "ingest", "viewer"):
        assert audit(api, api.key(role=role)) == (403, {"error": f"the {role} role may not admin", "details": []})
    assert api.client.get("/v1/audit").status_code == 401
    for params, field in (
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": "9" * 20}, "cursor"),
        ({"cursor": "1 OR 1=1"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "x"}, "limit"),
    ):
        status, body = audit(api, admin, **params)
        assert status == 400 and [d["field"] for d in body["details"]] == [field], params
    assert audit(api, admin, cursor="1") == (200, {"data": [], "next_cursor": None})
