"""The four documented APIs (seeds 000-003), through HTTP, on every backend.

Helpers shared by the dialect tests: what the native API shows of the same tenant.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, Carried

DEEP = 100  # past the 64-level nesting limit


def stored(api: Api, key: str) -> list[dict[str, Any]]:
    """Every canonical event of the key's tenant and mode (GET /v1/events), newest first,
    with `received_at` checked and dropped (it is the server's clock)."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        response = api.client.get("/v1/events", params=params, headers=api.as_(key))
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["data"]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    for event in events:
        assert event.pop("received_at").endswith("Z")
    return events


def log_id(event: dict[str, Any]) -> str:
    """Seed 003's documented `<ms>-<n>` form: the UUIDv7's millisecond time and the log offset.
    The message id without a bus, and with one the answer to a duplicate (nothing maps an event
    to its entry)."""
    return f"{int(event['id'][4:16], 16)}-{event['seq']}"


def message_id(carried: Carried, event: dict[str, Any]) -> str:
    """Seed 003's message id of an accepted event: with a bus, its entry's id in its partition's
    stream."""
    return carried.entry_id(event["id"]) if carried.bus else log_id(event)


def received_at(api: Api, key: str, event_id: str) -> str:
    response = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key))
    assert response.status_code == 200, response.text
    return str(response.json()["received_at"])


def quarantined(api: Api, key: str) -> list[dict[str, Any]]:
    """The quarantine of the key's tenant and mode, oldest first, as (dialect, reasons, raw)
    plus the stable fields; ids and times are checked for form and dropped."""
    response = api.client.get("/v1/quarantine", params={"limit": 1000}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    items = []
    for item in reversed(body["data"]):
        assert item.pop("id").startswith("qua_")
        assert item.pop("received_at").endswith("Z")
        items.append(item)
    return items


def quarantine_item(dialect: str, reasons: list[dict[str, str]], raw: str, tenant: str = "acme") -> dict[str, Any]:
    """A quarantined item as GET /v1/quarantine lists it (without id and received_at)."""
    return {
        "tenant": tenant,
        "mode": "live",
        "dialect": dialect,
        "type": None,
        "reasons": reasons,
        "raw": raw,
        "draft": None,
        "status": "quarantined",
        "replayed_event_id": None,
        "replayed_at": None,
    }


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def error(message: str, field: str = "", code: str = "invalid", title: str | None = None) -> dict[str, Any]:
    """An error body with one detail; `title` is the `error` when it differs from the message."""
    return {"error": title or message, "details": [{"field": field, "code": code, "message": message}]}


def bare(message: str) -> dict[str, Any]:
    """An error body without details, as authentication failures send."""
    return {"error": message, "details": []}


UNAUTHENTICATED = bare("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
INVALID_KEY = bare("invalid or revoked API key")
OTHER_TENANT = bare("X-Tenant-Id names a tenant this key does not belong to")


def canonical(
    event_id: str,
    type_: str,
    *,
    time: str,
    data: Any,
    seq: int,
    subject: str | None = None,
    source: str | None = None,
    channel: str | None = None,
    key: str | None = None,
    tenant: str = "acme",
    mode: str = "live",
) -> dict[str, Any]:
    """A whole canonical event as GET /v1/events shows it, without `received_at`."""
    return {
        "id": event_id,
        "type": type_,
        "subject": subject,
        "source": source,
        "channel": channel,
        "time": time,
        "idempotency_key": key,
        "data": data,
        "tenant": tenant,
        "mode": mode,
        "seq": seq,
    }
