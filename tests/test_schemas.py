"""Schema registry, enforcement modes, quarantine and replay, through HTTP."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from tests.conftest import Api, Carried
from tests.dialects import log_id, message_id

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


def test_schemas_are_per_mode(api: Api) -> None:
    """A test-mode editor's schema never touches live events, and a test key never sees live schemas."""
    live, test_editor, test_viewer = api.key(), api.key(role="editor", mode="test"), api.key(role="viewer", mode="test")
    put_schema(api, live, "order", ORDER_SCHEMA, "soft")
    assert api.client.get("/v1/schemas", headers=api.as_(test_viewer)).json() == {"data": []}
    missing = api.client.get("/v1/schemas/order", headers=api.as_(test_viewer))
    assert (missing.status_code, missing.json()) == (404, {"error": "no schema for this event type", "details": []})

    created = put_schema(api, test_editor, "order", {"type": "object", "required": ["sku"]}, "strict").json()
    assert (created["version"], created["enforcement"]) == (1, "strict")  # its own versions
    live_result = ingest(api, live, [{"type": "order", "data": {"amount": 3}}])
    assert (live_result["accepted"], live_result["rejected"]) == (1, 0)
    test_result = ingest(api, test_editor, [{"type": "order", "data": {"amount": 3}}])
    assert test_result["results"][0]["errors"] == [
        {"field": "data.sku", "code": "schema.required", "message": '"sku" is a required property'}
    ]
    listed = api.client.get("/v1/schemas", headers=api.as_(live)).json()["data"]
    assert [(s["version"], s["enforcement"], s["schema"]) for s in listed] == [(1, "soft", ORDER_SCHEMA)]

    # A test-mode replay is checked against the test-mode schema: the live one would accept it.
    [item] = api.client.get("/v1/quarantine", headers=api.as_(test_editor)).json()["data"]
    still = api.client.post("/v1/quarantine/replay", json={"ids": [item["id"]]}, headers=api.as_(test_editor))
    assert still.json()["still_rejected"] == 1
    put_schema(api, test_editor, "order", {"type": "object"}, "strict")
    replayed = api.client.post("/v1/quarantine/replay", json={"ids": [item["id"]]}, headers=api.as_(test_editor))
    assert replayed.json()["replayed"] == 1


def test_schemas_of_an_older_data_file_become_live_mode_schemas(sqlite_settings: Settings) -> None:
    """A data file from before schemas had a mode still opens; its schemas are the live mode's.
    SQLite's alone: such files are SQLite's (PostgreSQL's schema began with modes)."""
    settings = sqlite_settings
    settings.data_dir.mkdir(parents=True)
    with sqlite3.connect(settings.data_dir / "headwater.db") as conn:
        conn.execute(
            "CREATE TABLE schemas (tenant TEXT NOT NULL, type TEXT NOT NULL, version INTEGER NOT NULL,"
            " enforcement TEXT NOT NULL, schema TEXT NOT NULL, created_at INTEGER NOT NULL,"
            " PRIMARY KEY (tenant, type, version))"
        )
        for version, schema in ((1, {"type": "object"}), (2, ORDER_SCHEMA)):
            conn.execute(
                "INSERT INTO schemas VALUES ('acme', 'order', ?, 'strict', ?, 1776000000000000)",
                (version, json.dumps(schema)),
            )
    conn.close()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        api = Api(client, settings)
        live, test = api.key(), api.key(mode="test")
        versions = client.get("/v1/schemas/order/versions", headers=api.as_(live)).json()["data"]
        assert versions == [
            {
                "type": "order",
                "version": version,
                "enforcement": "strict",
                "schema": schema,
                "created_at": "2026-04-12T13:20:00Z",
            }
            for version, schema in ((1, {"type": "object"}), (2, ORDER_SCHEMA))
        ]
        assert ingest(api, live, [{"type": "order", "data": {}}])["rejected"] == 1
        assert client.get("/v1/schemas", headers=api.as_(test)).json() == {"data": []}
        assert ingest(api, test, [{"type": "order", "data": {}}])["accepted"] == 1
        assert put_schema(api, live, "order", {"type": "object"}, "off").json()["version"] == 3


def test_a_resent_key_is_a_duplicate_whatever_its_body(api: Api) -> None:
    """Dedup comes before validation: once K is stored, K is a duplicate with the original id,
    even when a strict schema (or the number check) would refuse what was resent."""
    key = api.key()
    first = ingest(api, key, [{"type": "order", "idempotency_key": "K", "data": {"amount": 5}}])
    original = first["results"][0]["id"]
    put_schema(api, key, "order", ORDER_SCHEMA, "strict")
    duplicate = {"accepted": 0, "duplicates": 1, "rejected": 0}
    resent = ingest(api, key, [{"type": "order", "idempotency_key": "K", "data": {"sku": "changed"}}])
    assert resent == {**duplicate, "results": [{"index": 0, "status": "duplicate", "id": original, "errors": []}]}
    response = api.client.post(
        "/v1/events",
        content='{"type": "order", "idempotency_key": "K", "data": {"amount": 1e400}}',
        headers=api.as_(key),
    )
    assert response.json() == {
        **duplicate,
        "results": [{"index": 0, "status": "duplicate", "id": original, "errors": []}],
    }

    # In one batch, the store decides in order: a refused copy after an accepted one is its
    # duplicate; a refused copy before the one that is accepted is refused.
    both = ingest(
        api,
        key,
        [
            {"type": "order", "idempotency_key": "A", "data": {"amount": 1}},
            {"type": "order", "idempotency_key": "A", "data": {}},
            {"type": "order", "idempotency_key": "B", "data": {}},
            {"type": "order", "idempotency_key": "B", "data": {"amount": 2}},
        ],
    )
    a_id, b_id = both["results"][0]["id"], both["results"][3]["id"]
    required = [{"field": "data.amount", "code": "schema.required", "message": '"amount" is a required property'}]
    assert both == {
        "accepted": 2,
        "duplicates": 1,
        "rejected": 1,
        "results": [
            {"index": 0, "status": "accepted", "id": a_id, "errors": []},
            {"index": 1, "status": "duplicate", "id": a_id, "errors": []},
            {"index": 2, "status": "rejected", "id": None, "errors": required},
            {"index": 3, "status": "accepted", "id": b_id, "errors": []},
        ],
    }
    # Only the refusal is kept in the quarantine, not the duplicates.
    assert [
        (q["type"], q["reasons"]) for q in api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"]
    ] == [("order", required)]


def test_a_resent_key_is_a_duplicate_in_every_dialect(api: Api, carried: Carried) -> None:
    key = api.key()
    headers = {"X-API-Key": key}
    event = {"event_name": "order", "participant_id": "u1", "idempotency_key": "g-1", "properties": {"amount": 1}}
    first = api.client.post("/api/v1/ingest/events", json=event, headers=headers)
    batch = {"events": [{"event_type": "order", "event_id": "d-1", "payload": {"amount": 1}}]}
    stored_batch = api.client.post("/api/openapi/v1/data/events", json=batch, headers=api.as_(key)).json()
    put_schema(api, key, "order", {**ORDER_SCHEMA, "required": ["amount", "sku"]}, "strict")

    again = api.client.post("/api/v1/ingest/events", json=event, headers=headers)
    events = api.client.get("/v1/events", headers=api.as_(key)).json()["data"]
    [original] = [e for e in events if e["idempotency_key"] == "g-1"]
    assert first.json() == {"accepted": True, "message_id": message_id(carried, original)}
    # The original's message id, in the form a duplicate has (with a bus too, see seed 003's dialect).
    assert (again.status_code, again.json()) == (202, {"accepted": True, "message_id": log_id(original)})
    # Seed 000's all-or-nothing batch: the resent event counts as sent, the new one is refused.
    resent = api.client.post("/api/openapi/v1/data/events", json=batch, headers=api.as_(key))
    assert (resent.status_code, resent.json()) == (200, stored_batch)
    mixed = {"events": [*batch["events"], {"event_type": "order", "event_id": "d-2", "payload": {"amount": 2}}]}
    refused = api.client.post("/api/openapi/v1/data/events", json=mixed, headers=api.as_(key))
    assert (refused.status_code, refused.json()) == (
        400,
        {
            "error": "invalid events: nothing in this batch was stored",
            "details": [
                {"field": "events.1.payload.sku", "code": "schema.required", "message": '"sku" is a required property'}
            ],
        },
    )
    assert len(api.client.get("/v1/events", headers=api.as_(key)).json()["data"]) == 2
