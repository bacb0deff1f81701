"""Schema registry, enforcement modes, quarantine and replay, through HTTP."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "minimum": 0}, "sku": {"type": "string"}},
    "required": ["amount"],
}


def put_schema(api: Api, key: str, type_: str, schema: Any, enforcement: str | None = None) -> Any:
    body: dict[str, Any] = {"schema": schema}
    if enforcement is not None:
        body["enforcement"] = enforcement
    return api.client.put(f"/v1/schemas/{type_}", json=body, headers=api.as_(key))


def ingest(api: Api, key: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.client.post("/v1/events", json={"events": events}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_versions_are_kept_and_listed(api: Api) -> None:
    key = api.key()
    first = put_schema(api, key, "order", ORDER_SCHEMA, "strict")
    assert first.status_code == 201
    created = first.json()
    assert created == {
        "type": "order",
        "version": 1,
        "enforcement": "strict",
        "schema": ORDER_SCHEMA,
        "created_at": created["created_at"],
    }
    second = put_schema(api, key, "order", {"type": "object"}).json()
    assert (second["version"], second["enforcement"]) == (2, "soft")
    put_schema(api, key, "click", {"type": "object"}, "off")

    latest = api.client.get("/v1/schemas", headers=api.as_(key)).json()["data"]
    assert [(s["type"], s["version"], s["enforcement"]) for s in latest] == [("click", 1, "off"), ("order", 2, "soft")]
    versions = api.client.get("/v1/schemas/order/versions", headers=api.as_(key)).json()["data"]
    assert [(v["version"], v["schema"]) for v in versions] == [(1, ORDER_SCHEMA), (2, {"type": "object"})]
    assert api.client.get("/v1/schemas/order", headers=api.as_(key)).json()["version"] == 2
    missing = api.client.get("/v1/schemas/nope/versions", headers=api.as_(key))
    assert (missing.status_code, missing.json()) == (404, {"error": "no schema for this event type", "details": []})


def test_schemas_are_per_tenant(api: Api) -> None:
    a, b = api.key("a"), api.key("b")
    put_schema(api, a, "order", ORDER_SCHEMA, "strict")
    assert api.client.get("/v1/schemas", headers=api.as_(b)).json() == {"data": []}
    result = ingest(api, b, [{"type": "order", "data": {}}])
    assert result["accepted"] == 1


def test_bad_schemas_are_refused(api: Api) -> None:
    key = api.key()
    cases = [
        ({"type": 12}, "not a usable JSON Schema"),
        ({"pattern": "(?=lookahead)"}, "not a usable JSON Schema"),
        ({"$ref": "http://169.254.169.254/latest"}, "not a usable JSON Schema"),
        ([1, 2], "a schema must be a JSON object"),
        ({"enum": ["x" * 70_000]}, "schema is larger than"),
    ]
    for schema, message in cases:
        response = put_schema(api, key, "order", schema, "strict")
        assert response.status_code == 400, (schema, response.text)
        body = response.json()
        assert body["error"].startswith(message), body
        assert [(d["field"], d["code"]) for d in body["details"]] == [("schema", "invalid_schema")]
    bad_mode = put_schema(api, key, "order", {}, "loud")
    assert bad_mode.status_code == 400
    assert bad_mode.json()["details"][0]["field"] == "enforcement"
    assert api.client.get("/v1/schemas", headers=api.as_(key)).json() == {"data": []}


def test_viewer_and_ingest_roles_cannot_configure(api: Api) -> None:
    for role in ("viewer", "ingest"):
        response = put_schema(api, api.key(role=role), "order", ORDER_SCHEMA)
        assert response.status_code == 403
    assert put_schema(api, api.key(role="editor"), "order", ORDER_SCHEMA).status_code == 201


def test_soft_accepts_and_records_violations(api: Api) -> None:
    key = api.key()
    put_schema(api, key, "order", ORDER_SCHEMA, "soft")
    result = ingest(
        api, key, [{"type": "order", "data": {"amount": -1, "sku": 5}}, {"type": "order", "data": {"amount": 3}}]
    )
    assert (result["accepted"], result["rejected"]) == (2, 0)
    flagged = api.client.get(f"/v1/events/{result['results'][0]['id']}", headers=api.as_(key)).json()
    assert flagged["violations"] == [
        {"field": "data.amount", "code": "schema.minimum", "message": "-1 is less than the minimum of 0"},
        {"field": "data.sku", "code": "schema.type", "message": '5 is not of type "string"'},
    ]
    clean = api.client.get(f"/v1/events/{result['results'][1]['id']}", headers=api.as_(key)).json()
    assert "violations" not in clean
    catalog = api.client.get("/v1/event-types", headers=api.as_(key)).json()["data"]
    assert [(c["type"], c["count"], c["violations"]) for c in catalog] == [("order", 2, 1)]


def test_strict_rejects_into_quarantine_and_replay_after_fix(api: Api) -> None:
    key = api.key()
    put_schema(api, key, "order", ORDER_SCHEMA, "strict")
    result = ingest(
        api,
        key,
        [
            {"type": "order", "data": {"amount": 5}},
            {"type": "order", "idempotency_key": "o-2", "time": "2026-01-02T03:04:05Z", "data": {"sku": "A"}},
            {"type": "", "data": {}},
        ],
    )
    assert result["results"][1] == {
        "index": 1,
        "status": "rejected",
        "id": None,
        "errors": [{"field": "data.amount", "code": "schema.required", "message": '"amount" is a required property'}],
    }
    assert (result["accepted"], result["rejected"]) == (1, 2)

    listed = api.client.get("/v1/quarantine", headers=api.as_(key)).json()
    assert listed["next_cursor"] is None
    items = {item["type"]: item for item in listed["data"]}
    assert set(items) == {"order", None}
    schema_item = items["order"]
    assert schema_item["status"] == "quarantined"
    assert schema_item["dialect"] == "native"
    assert schema_item["reasons"] == result["results"][1]["errors"]
    assert schema_item["raw"] == (
        '{"type":"order","idempotency_key":"o-2","time":"2026-01-02T03:04:05Z","data":{"sku":"A"}}'
    )
    assert items[None]["reasons"][0]["field"] == "type"

    # Replaying before the fix changes nothing and says why.
    still = api.client.post("/v1/quarantine/replay", json={"ids": [schema_item["id"]]}, headers=api.as_(key)).json()
    assert still == {
        "replayed": 0,
        "duplicates": 0,
        "still_rejected": 1,
        "results": [
            {"id": schema_item["id"], "status": "rejected", "event_id": None, "errors": schema_item["reasons"]}
        ],
    }

    put_schema(api, key, "order", {**ORDER_SCHEMA, "required": []}, "strict")
    replay = api.client.post("/v1/quarantine/replay", json={"filter": {"type": "order"}}, headers=api.as_(key)).json()
    event_id = replay["results"][0]["event_id"]
    assert replay == {
        "replayed": 1,
        "duplicates": 0,
        "still_rejected": 0,
        "results": [{"id": schema_item["id"], "status": "accepted", "event_id": event_id, "errors": []}],
    }
    event = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key)).json()
    assert (event["type"], event["idempotency_key"], event["time"], event["data"]) == (
        "order",
        "o-2",
        "2026-01-02T03:04:05Z",
        {"sku": "A"},
    )
    # Replayed items leave the default listing; dedup holds on a second replay.
    remaining = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"]
    assert [item["type"] for item in remaining] == [None]
    done = api.client.get("/v1/quarantine", params={"status": "replayed"}, headers=api.as_(key)).json()["data"]
    assert [(d["id"], d["replayed_event_id"]) for d in done] == [(schema_item["id"], event_id)]
    again = ingest(api, key, [{"type": "order", "idempotency_key": "o-2", "data": {"sku": "A"}}])
    assert again["results"][0] == {"index": 0, "status": "duplicate", "id": event_id, "errors": []}


def test_replay_request_errors(api: Api) -> None:
    key = api.key()
    for body, field in [
        ({}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": ["a"], "filter": {}}, "ids"),
        ({"filter": {"from": "soon"}}, "filter.from"),
        ({"ids": "x"}, "ids"),
    ]:
        response = api.client.post("/v1/quarantine/replay", json=body, headers=api.as_(key))
        assert response.status_code == 400, (body, response.text)
        assert response.json()["details"][0]["field"] == field
    assert (
        api.client.post(
            "/v1/quarantine/replay", json={"ids": ["x"]}, headers=api.as_(api.key(role="viewer"))
        ).status_code
        == 403
    )


def test_quarantine_is_scoped_by_tenant_and_mode(api: Api) -> None:
    live, test, other = api.key(), api.key(mode="test"), api.key("other")
    ingest(api, live, [{"type": ""}])
    assert len(api.client.get("/v1/quarantine", headers=api.as_(live)).json()["data"]) == 1
    assert api.client.get("/v1/quarantine", headers=api.as_(test)).json() == {"data": [], "next_cursor": None}
    assert api.client.get("/v1/quarantine", headers=api.as_(other)).json() == {"data": [], "next_cursor": None}


def test_catalog_discovers_types_and_properties(api: Api) -> None:
    key = api.key()
    ingest(
        api,
        key,
        [
            {"type": "purchase", "data": {"amount": 5, "sku": "A", "vip": True}},
            {"type": "purchase", "data": {"amount": 5.5, "tags": ["x"], "meta": {"a": 1}, "note": None}},
            {"type": "page_view", "data": {}},
        ],
    )
    ingest(api, api.key("other"), [{"type": "secret", "data": {"x": 1}}])
    catalog = api.client.get("/v1/event-types", headers=api.as_(key)).json()["data"]
    for entry in catalog:
        assert entry.pop("first_seen") <= entry.pop("last_seen")
    assert catalog == [
        {"type": "page_view", "count": 1, "violations": 0, "properties": {}},
        {
            "type": "purchase",
            "count": 2,
            "violations": 0,
            "properties": {
                "amount": ["integer", "number"],
                "meta": ["object"],
                "note": ["null"],
                "sku": ["string"],
                "tags": ["array"],
                "vip": ["boolean"],
            },
        },
    ]
