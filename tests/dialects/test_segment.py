"""The Segment tracking API: the real `segment-analytics-python` client against a real server,
and the protocol's edges through HTTP."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics import Client
from segment.analytics.version import VERSION
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.dialects import segment
from headwater.events import Rejection
from tests.conftest import Api, ServerProcess, make_key, run_cli

LIBRARY = {"name": "analytics-python", "version": VERSION}
BASE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def iso(when: datetime) -> str:
    """How the API returns a time (msgspec: microseconds when there are any, then Z)."""
    text = when.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def post(api: Api, path: str, body: Any, key: str, status: int = 200) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=basic(key))
    assert response.status_code == status, response.text
    return dict(response.json())


def events(api: Api, key: str, **params: Any) -> list[dict[str, Any]]:
    response = api.client.get("/v1/events", params={"limit": 1000, **params}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def event(api: Api, key: str, event_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def ok(*statuses: tuple[str, str | None]) -> dict[str, Any]:
    """The whole success body for these (status, id) results."""
    results = [{"index": i, "status": s, "id": id_, "errors": []} for i, (s, id_) in enumerate(statuses)]
    return {
        "success": True,
        "accepted": sum(s == "accepted" for s, _ in statuses),
        "duplicates": sum(s == "duplicate" for s, _ in statuses),
        "rejected": 0,
        "results": results,
    }


def ids(body: dict[str, Any]) -> list[str | None]:
    return [r["id"] for r in body["results"]]


# --- the real client ---------------------------------------------------------------------


def _send_with_the_library(client: Client, i: int) -> dict[str, Any]:
    """Send message `i` (one of the six calls) and return the message as the library sends it."""
    when = BASE + timedelta(minutes=i, milliseconds=i)
    message_id = f"msg-{i:04d}"
    user = f"user-{i % 7}" if i % 5 else None
    anonymous = f"anon-{i % 5}" if user is None or i % 2 else None
    context = {"channel": "server", "ip": "10.0.0.1"} if i % 4 == 0 else {"locale": "de-DE"}
    common = {"context": context, "timestamp": when, "message_id": message_id, "integrations": {"All": True}}
    kind = ("track", "identify", "page", "screen", "group", "alias")[i % 6]
    sent: dict[str, Any] = {"integrations": {"All": True}}
    if kind == "track":
        properties = {"revenue": i * 1.5, "sku": f"SKU-{i}", "tags": ["a", "b"], "nested": {"n": i}}
        client.track(user, f"Event {i % 4}", properties, anonymous_id=anonymous, **common)
        sent |= {"anonymousId": anonymous, "properties": properties, "userId": user, "type": "track"}
    elif kind == "identify":
        traits = {"email": f"u{i}@example.com", "plan": "pro"}
        client.identify(user, traits, anonymous_id=anonymous, **common)
        sent |= {"anonymousId": anonymous, "userId": user, "type": "identify", "traits": traits}
    elif kind in ("page", "screen"):
        properties = {"path": f"/p/{i}"}
        call = client.page if kind == "page" else client.screen
        call(user, "Docs", f"Page {i}", properties, anonymous_id=anonymous, **common)
        sent |= {"anonymousId": anonymous, "properties": properties, "category": "Docs", "userId": user}
        sent |= {"type": kind, "name": f"Page {i}"}
    elif kind == "group":
        traits = {"name": f"Org {i}"}
        client.group(user, f"org-{i % 3}", traits, anonymous_id=anonymous, **common)
        sent |= {"anonymousId": anonymous, "groupId": f"org-{i % 3}", "userId": user, "traits": traits}
        sent |= {"type": "group"}
    else:
        user = user or f"user-{i}"
        anonymous = None
        client.alias(f"anon-{i}", user, **common)
        sent |= {"previousId": f"anon-{i}", "userId": user, "type": "alias", "anonymousId": None}
    sent["context"] = {**context, "library": LIBRARY}
    return {
        "message_id": message_id,
        "type": f"Event {i % 4}" if kind == "track" else kind,
        "subject": user or anonymous,
        "channel": context.get("channel"),
        "time": iso(when.replace(microsecond=when.microsecond // 1000 * 1000)),
        "data": sent,
    }


def _send_and_read_back(url: str, write_key: str, read_key: str) -> tuple[list[dict[str, Any]], list[Any], Any]:
    errors: list[Exception] = []
    client = Client(
        write_key,
        host=url,
        upload_size=50,
        gzip=True,
        max_retries=2,
        on_error=lambda error, batch: errors.append(error),
    )
    sent = [_send_with_the_library(client, i) for i in range(300)]
    # Redelivered messages (same messageId) are duplicates, not new events.
    for i in range(0, 300, 30):
        _send_with_the_library(client, i)
    client.flush()
    client.shutdown()
    assert errors == []

    stored: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {read_key}"}) as http:
        params: dict[str, Any] = {"limit": 120}
        while True:
            page = http.get("/v1/events", params=params).json()
            stored += page["data"]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        sample = http.get(f"/v1/events/{stored[0]['id']}").json()
    return sent, stored, sample


def test_real_client_round_trip(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def key(role: str) -> str:
        out = run_cli("keys", "create", "--tenant", "seg", "--role", role, "--data-dir", str(data_dir))
        return out.stdout.strip().splitlines()[-1]

    write_key, read_key = key("ingest"), key("viewer")
    server = server_factory(data_dir)
    server.start()
    try:
        sent, stored, sample = _send_and_read_back(server.url, write_key, read_key)
    finally:
        server.stop()
    assert sample == stored[0]

    assert len(stored) == 300
    by_key = {e["idempotency_key"]: e for e in stored}
    assert sorted(by_key) == [f"msg-{i:04d}" for i in range(300)]
    types = [e["type"] for e in stored]
    assert {t: types.count(t) for t in set(types)} == {
        "identify": 50,
        "page": 50,
        "screen": 50,
        "group": 50,
        "alias": 50,
        "Event 0": 25,
        "Event 2": 25,
    }
    for expected in sent:
        got = dict(by_key[expected["message_id"]])
        assert got.pop("id").startswith("evt_")
        assert got.pop("received_at").endswith("Z")
        assert isinstance(got.pop("seq"), int)
        assert got == {
            "type": expected["type"],
            "subject": expected["subject"],
            "source": "segment",
            "channel": expected["channel"],
            "time": expected["time"],
            "idempotency_key": expected["message_id"],
            "data": expected["data"],
            "tenant": "seg",
            "mode": "live",
        }
    # Spelled out once, so the mapping above is not only checked against itself.
    track = by_key["msg-0012"]
    assert (track["type"], track["subject"], track["channel"]) == ("Event 0", "user-5", "server")
    assert track["time"] == "2026-03-01T12:12:00.012000Z"
    assert track["data"] == {
        "integrations": {"All": True},
        "anonymousId": None,
        "properties": {"revenue": 18.0, "sku": "SKU-12", "tags": ["a", "b"], "nested": {"n": 12}},
        "context": {"channel": "server", "ip": "10.0.0.1", "library": LIBRARY},
        "userId": "user-5",
        "type": "track",
    }
    anonymous = by_key["msg-0000"]
    assert (anonymous["type"], anonymous["subject"], anonymous["data"]["userId"]) == ("Event 0", "anon-0", None)


# --- the calls, one by one ------------------------------------------------------------------


def test_track_round_trip(api: Api) -> None:
    key = api.key()
    message = {
        "userId": "u-1",
        "anonymousId": "a-1",
        "event": "Order Completed",
        "properties": {"revenue": 12.5, "items": [{"sku": "A"}]},
        "context": {"channel": "web", "library": {"name": "curl"}},
        "integrations": {"Mixpanel": False},
        "messageId": "m-1",
        "timestamp": "2026-04-12T10:30:00+02:00",
    }
    body = post(api, "/v1/track", message, key)
    assert body == ok(("accepted", ids(body)[0]))
    stored = event(api, key, str(ids(body)[0]))
    assert stored == {
        "id": ids(body)[0],
        "type": "Order Completed",
        "subject": "u-1",
        "source": "segment",
        "channel": "web",
        "time": "2026-04-12T08:30:00Z",
        "received_at": stored["received_at"],
        "idempotency_key": "m-1",
        "data": {
            "userId": "u-1",
            "anonymousId": "a-1",
            "properties": {"revenue": 12.5, "items": [{"sku": "A"}]},
            "context": {"channel": "web", "library": {"name": "curl"}},
            "integrations": {"Mixpanel": False},
            "type": "track",
        },
        "tenant": "acme",
        "mode": "live",
        "seq": 1,
    }


@pytest.mark.parametrize(
    ("path", "message", "subject", "data"),
    [
        (
            "/v1/identify",
            {"anonymousId": "a-9", "traits": {"email": "x@example.com"}},
            "a-9",
            {"anonymousId": "a-9", "traits": {"email": "x@example.com"}, "type": "identify"},
        ),
        (
            "/v1/page",
            {"userId": 42, "name": "Pricing", "properties": {"path": "/pricing"}},
            "42",
            {"userId": 42, "name": "Pricing", "properties": {"path": "/pricing"}, "type": "page"},
        ),
        (
            "/v1/screen",
            {"type": "track", "userId": "u", "name": "Home", "channel": "mobile"},
            "u",
            {"type": "screen", "userId": "u", "name": "Home", "channel": "mobile"},
        ),
        (
            "/v1/group",
            {"userId": "u", "groupId": "g-1", "traits": {"name": "Acme"}},
            "u",
            {"userId": "u", "groupId": "g-1", "traits": {"name": "Acme"}, "type": "group"},
        ),
        (
            "/v1/alias",
            {"userId": "u", "previousId": "a-9"},
            "u",
            {"userId": "u", "previousId": "a-9", "type": "alias"},
        ),
    ],
)
def test_each_call_maps_to_its_type(
    api: Api, path: str, message: dict[str, Any], subject: str, data: dict[str, Any]
) -> None:
    key = api.key()
    body = post(api, path, {**message, "timestamp": "2026-01-01T00:00:00Z"}, key)
    stored = event(api, key, str(ids(body)[0]))
    assert stored == {
        "id": ids(body)[0],
        "type": path.removeprefix("/v1/"),
        "subject": subject,
        "source": "segment",
        "channel": "mobile" if path == "/v1/screen" else None,
        "time": "2026-01-01T00:00:00Z",
        "received_at": stored["received_at"],
        "data": data,
        "idempotency_key": None,
        "tenant": "acme",
        "mode": "live",
        "seq": 1,
    }


def test_batch_context_is_merged_into_each_message(api: Api) -> None:
    key = api.key()
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "event": "A", "context": {"ip": "1.1.1.1", "channel": "web"}},
            {"type": "identify", "userId": "u"},
        ],
        "context": {"ip": "9.9.9.9", "device": {"id": "d-1"}},
    }
    body = post(api, "/v1/batch", batch, key)
    first, second = (event(api, key, str(i)) for i in ids(body))
    assert (first["channel"], first["data"]["context"]) == (
        "web",
        {"ip": "1.1.1.1", "device": {"id": "d-1"}, "channel": "web"},
    )
    assert (second["channel"], second["data"]["context"]) == (None, {"ip": "9.9.9.9", "device": {"id": "d-1"}})


def test_a_number_out_of_range_in_the_batch_context_refuses_the_batch(api: Api) -> None:
    """The batch's context goes into every message, so no message could be kept: a 400 naming
    the number, and nothing stored."""
    key = api.key()
    body = (
        b'{"batch": [{"type": "track", "userId": "u", "event": "A"}],'
        b' "context": {"ok": 1, "device": {"big": -36893488147419103233}}}'
    )
    response = api.client.post("/v1/batch", content=body, headers={**api.as_(key), "Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "the batch's context holds a number out of range",
            "details": [
                {
                    "field": "context.device.big",
                    "code": "number_out_of_range",
                    "message": (
                        "number out of range: a float must be finite in 64 bits, an integer from -2^63 to 2^64-1"
                    ),
                }
            ],
        },
    )
    assert api.client.get("/v1/events", headers=api.as_(key)).json()["data"] == []


def test_message_id_deduplicates(api: Api) -> None:
    key = api.key()
    message = {"userId": "u", "event": "Signed Up", "messageId": "dup-1"}
    first = post(api, "/v1/track", message, key)
    original = ids(first)[0]
    again = post(api, "/v1/track", message, key)
    assert again == ok(("duplicate", original))
    batch = post(
        api,
        "/v1/batch",
        {
            "batch": [
                {**message, "type": "track"},
                {"type": "track", "userId": "u", "event": "Signed Up", "messageId": "dup-2"},
                {"type": "identify", "userId": "u", "messageId": "dup-2"},
            ]
        },
        key,
    )
    second = ids(batch)[1]
    assert batch == ok(("duplicate", original), ("accepted", second), ("duplicate", second))
    assert [e["idempotency_key"] for e in events(api, key)] == ["dup-2", "dup-1"]


# --- clock skew ---------------------------------------------------------------------------------


def test_skew_below_the_threshold_keeps_the_client_time(api: Api) -> None:
    key = api.key()
    now = datetime.now(UTC)
    timestamp = now - timedelta(hours=2, milliseconds=250)
    batch = {
        "batch": [{"type": "track", "userId": "u", "event": "E", "timestamp": timestamp.isoformat()}],
        # Four minutes behind the server: under the 5-minute threshold, so nothing moves.
        "sentAt": (now - timedelta(minutes=4)).isoformat(),
    }
    stored = event(api, key, str(ids(post(api, "/v1/batch", batch, key))[0]))
    assert stored["time"] == iso(timestamp)
    assert stored["data"] == {"type": "track", "userId": "u"}


def test_skew_above_the_threshold_is_corrected(api: Api) -> None:
    key = api.key()
    # The client's clock runs three hours fast: it sent the batch at (its) 15:00 and the
    # event happened 90 s earlier; so the event happened 90 s before the server received it.
    sent_at = datetime.now(UTC) + timedelta(hours=3)
    timestamp = sent_at - timedelta(seconds=90, microseconds=1500)
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "event": "E", "timestamp": timestamp.isoformat()},
            {"type": "page", "userId": "u", "name": "No timestamp"},
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "timestamp": timestamp.isoformat(),
                "sentAt": iso(timestamp),
            },
        ],
        "sentAt": sent_at.isoformat(),
    }
    first, second, third = (event(api, key, str(i)) for i in ids(post(api, "/v1/batch", batch, key)))
    received = datetime.fromisoformat(first["received_at"])
    assert first["time"] == iso(received - timedelta(seconds=90, microseconds=1500))
    assert first["data"] == {
        "type": "track",
        "userId": "u",
        "originalTimestamp": timestamp.isoformat(),
        "sentAt": iso(sent_at),
    }
    assert second["time"] == second["received_at"]
    # A message's own sentAt wins over the batch's; this one was sent when it happened.
    assert third["time"] == iso(received)
    assert third["data"]["originalTimestamp"] == timestamp.isoformat()


def test_skew_threshold_is_configurable(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_SEGMENT_SKEW_SECONDS", "30")
    assert Settings().segment_skew_seconds == 30.0
    monkeypatch.delenv("HEADWATER_SEGMENT_SKEW_SECONDS")
    assert Settings().segment_skew_seconds is None
    assert segment.SKEW_THRESHOLD_SECONDS == 300.0

    key = make_key(settings, "acme")
    sent_at = datetime.now(UTC) - timedelta(minutes=1)
    timestamp = sent_at - timedelta(seconds=5)
    message = {"userId": "u", "event": "E", "timestamp": iso(timestamp), "sentAt": iso(sent_at)}
    times = []
    for threshold in (30.0, 90.0):
        with TestClient(create_app(replace(settings, segment_skew_seconds=threshold))) as client:
            response = client.post("/v1/track", json=message, headers=basic(key))
            event_id = response.json()["results"][0]["id"]
            stored = client.get(f"/v1/events/{event_id}", headers=basic(key)).json()
        times.append((stored["time"], stored["received_at"]))
        message["messageId"] = "second"
    # A minute of skew: corrected over a 30 s threshold, left alone under a 90 s one.
    (corrected, received), (kept, _) = times
    assert corrected == iso(datetime.fromisoformat(received) - timedelta(seconds=5))
    assert kept == iso(timestamp)


# --- authentication ----------------------------------------------------------------------------


def test_authentication(api: Api) -> None:
    key = api.key()
    message = {"userId": "u", "event": "E"}
    error = {"error": "invalid or revoked API key", "details": []}
    missing = {
        "error": "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        "details": [],
    }
    for headers, expected in [
        (basic("hw_live_" + "0" * 40), error),
        (basic("not-a-key"), error),
        ({"Authorization": "Basic !!!"}, missing),
        ({}, missing),
    ]:
        for path in ("/v1/track", "/v1/batch"):
            body = message if path == "/v1/track" else {"batch": [{**message, "type": "track"}]}
            response = api.client.post(path, json=body, headers=headers)
            assert (response.status_code, response.json()) == (401, expected)
    # A key in the body, as in Segment's curl examples; but a header key is never overridden.
    assert post(api, "/v1/track", {**message, "writeKey": key}, "")["accepted"] == 1
    response = api.client.post("/v1/track", json={**message, "writeKey": key}, headers=basic("hw_live_bad"))
    assert response.status_code == 401
    response = api.client.post("/v1/track", json=message, headers=api.as_(key))
    assert response.status_code == 200
    viewer = api.key(role="viewer")
    response = api.client.post("/v1/track", json=message, headers=basic(viewer))
    assert (response.status_code, response.json()) == (403, {"error": "the viewer role may not ingest", "details": []})
    assert len(events(api, key)) == 2


def test_write_key_in_the_body_is_not_kept(api: Api) -> None:
    key = api.key()
    response = api.client.post("/v1/track", json={"event": "E", "writeKey": key, "timestamp": "x"})
    assert response.json()["rejected"] == 1
    response = api.client.post(
        "/v1/batch", json={"writeKey": key, "batch": [{"type": "track", "userId": "u", "event": "E"}]}
    )
    stored = event(api, key, response.json()["results"][0]["id"])
    assert key not in json.dumps(stored)
    quarantined = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"]
    assert [q["raw"] for q in quarantined] == ['{"event":"E","timestamp":"x","type":"track"}']


def test_a_write_key_of_the_wrong_type_is_refused(api: Api) -> None:
    """With a header key or without one: a body key that is not a string is a 400, not "no key"."""
    key = api.key()
    for write_key, got in ((5, "int"), ([], "array"), ({"key": key}, "object")):
        problem = {"field": "writeKey", "code": "invalid_type", "message": f"Expected `str | null`, got `{got}`"}
        for path, body in (
            ("/v1/track", {"userId": "u", "event": "E", "writeKey": write_key}),
            ("/v1/batch", {"writeKey": write_key, "batch": [{"type": "track", "userId": "u", "event": "E"}]}),
        ):
            for headers in (api.as_(key), {}):
                response = api.client.post(path, json=body, headers=headers)
                assert (response.status_code, response.json()) == (
                    400,
                    {
                        "error": "request body is not valid",
                        "details": [problem],
                    },
                ), (path, write_key, headers)
    assert events(api, key) == []


# --- bad input: never a 500 -------------------------------------------------------------------


def test_bad_messages_in_a_batch_are_rejected_one_by_one(api: Api) -> None:
    key = api.key()
    good = {"type": "track", "userId": "u", "event": "E"}
    bad: list[tuple[Any, dict[str, str]]] = [
        ({"type": "track", "event": "E"}, {"field": "userId", "code": "required"}),
        ({"type": "track", "userId": "u"}, {"field": "event", "code": "required"}),
        ({"type": "track", "userId": "u", "event": ""}, {"field": "event", "code": "required"}),
        ({"type": "track", "userId": "u", "event": "x" * 129}, {"field": "event", "code": "too_long"}),
        ({"userId": "u"}, {"field": "type", "code": "required"}),
        ({"type": "purchase", "userId": "u"}, {"field": "type", "code": "invalid"}),
        ({"type": "group", "userId": "u"}, {"field": "groupId", "code": "required"}),
        ({"type": "alias", "anonymousId": "a", "previousId": "p"}, {"field": "userId", "code": "required"}),
        ({"type": "alias", "userId": "u"}, {"field": "previousId", "code": "required"}),
        ({"type": "identify", "userId": {"id": 1}}, {"field": "userId", "code": "invalid_type"}),
        ({"type": "identify", "userId": "u", "traits": [1]}, {"field": "traits", "code": "invalid_type"}),
        ({**good, "properties": "x"}, {"field": "properties", "code": "invalid_type"}),
        ({**good, "context": 5}, {"field": "context", "code": "invalid_type"}),
        ({**good, "context": {"channel": 5}}, {"field": "context.channel", "code": "invalid_type"}),
        ({**good, "messageId": ""}, {"field": "messageId", "code": "too_short"}),
        ({**good, "messageId": 7}, {"field": "messageId", "code": "invalid_type"}),
        ({**good, "timestamp": "yesterday"}, {"field": "timestamp", "code": "invalid_format"}),
        ({**good, "timestamp": 1700000000}, {"field": "timestamp", "code": "invalid_type"}),
        ({**good, "sentAt": "soon"}, {"field": "sentAt", "code": "invalid_format"}),
        ({**good, "userId": "u" * 257}, {"field": "userId", "code": "too_long"}),
        ({**good, "userId": 10**20}, {"field": "userId", "code": "invalid_type"}),
        ({**good, "userId": 1.5}, {"field": "userId", "code": "invalid_type"}),
        ([good], {"field": "", "code": "invalid_type"}),
        ("track", {"field": "", "code": "invalid_type"}),
        (None, {"field": "", "code": "invalid_type"}),
        ({**good, "properties": {"blob": "x" * segment.MAX_MESSAGE_BYTES}}, {"field": "", "code": "too_large"}),
    ]
    batch = [good]
    for message, _ in bad:
        batch += [message, good]
    body = post(api, "/v1/batch", {"batch": batch}, key)
    assert (body["success"], body["accepted"], body["duplicates"], body["rejected"]) == (
        True,
        len(bad) + 1,
        0,
        len(bad),
    )
    for n, (_, expected) in enumerate(bad):
        result = body["results"][2 * n + 1]
        assert (result["status"], result["id"]) == ("rejected", None)
        assert [{"field": e["field"], "code": e["code"]} for e in result["errors"]] == [expected], result
    assert all(r["status"] == "accepted" for r in body["results"][::2])
    assert len(events(api, key)) == len(bad) + 1
    quarantined = api.client.get("/v1/quarantine", params={"limit": 1000}, headers=api.as_(key)).json()["data"]
    assert len(quarantined) == len(bad)
    assert {q["dialect"] for q in quarantined} == {"segment"}


def test_a_quarantined_message_replays_through_the_segment_reader(api: Api) -> None:
    key = api.key()
    response = post(api, "/v1/screen", {"userId": "u", "name": "Home", "timestamp": "2026-13-01"}, key)
    assert response["rejected"] == 1
    # Nothing server-side can fix a bad timestamp: the replay re-reads it and says so again.
    item = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"][0]
    assert item["raw"] == '{"userId":"u","name":"Home","timestamp":"2026-13-01","type":"screen"}'
    replay = api.client.post("/v1/quarantine/replay", json={"ids": [item["id"]]}, headers=api.as_(key)).json()
    assert replay["still_rejected"] == 1
    assert replay["results"][0]["errors"][0]["field"] == "timestamp"
    # The reader is the one every replay uses.
    draft = segment.read_item(item["raw"].replace("2026-13-01", "2026-12-01").encode())
    assert not isinstance(draft, Rejection)
    assert (draft.type, draft.subject, draft.time) == ("screen", "u", datetime(2026, 12, 1, tzinfo=UTC))


def test_oversize_messages_and_batches(api: Api) -> None:
    key = api.key()
    limit = segment.MAX_MESSAGE_BYTES
    error = f"a message exceeds the limit of {limit} bytes"

    def send(path: str, body: Any) -> httpx.Response:
        content = json.dumps(body).encode()
        return api.client.post(path, content=content, headers={**basic(key), "Content-Type": "application/json"})

    message = {"userId": "u", "event": "E", "properties": {"blob": ""}}
    message["properties"]["blob"] = "x" * (limit - len(json.dumps(message).encode()))
    assert len(json.dumps(message).encode()) == limit
    assert send("/v1/track", message).json()["accepted"] == 1
    message["properties"]["blob"] += "x"
    response = send("/v1/track", message)
    assert (response.status_code, response.json()) == (
        400,
        {"error": error, "details": [{"field": "", "code": "too_large", "message": error}]},
    )

    batch = {"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 20_000}}] * 25}
    assert len(json.dumps(batch)) <= segment.MAX_BATCH_BYTES
    assert send("/v1/batch", batch).json()["accepted"] == 25
    batch["batch"].append(batch["batch"][0])
    assert len(json.dumps(batch)) > segment.MAX_BATCH_BYTES
    response = send("/v1/batch", batch)
    assert response.status_code == 400
    assert response.json()["details"][0]["code"] == "too_large"
    # Counted after gzip is undone: a small compressed body that inflates past the limit is refused too.
    packed = gzip.compress(json.dumps(batch).encode())
    response = api.client.post(
        "/v1/batch",
        content=packed,
        headers={**basic(key), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["details"][0]["code"] == "too_large"
    too_many = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * (segment.MAX_BATCH_MESSAGES + 1)}
    response = api.client.post("/v1/batch", json=too_many, headers=basic(key))
    assert response.status_code == 400
    assert response.json()["details"][0] == {
        "field": "batch",
        "code": "too_many",
        "message": "a batch may carry at most 2500 messages; this one has 2501",
    }
    assert len(events(api, key)) == 26


@pytest.mark.parametrize(
    ("path", "content", "field", "code"),
    [
        ("/v1/track", b"", "", "required"),
        ("/v1/track", b"   ", "", "required"),
        ("/v1/track", b'{"userId": "u", "event": ', "", "invalid_json"),
        ("/v1/track", b"[1, 2]", "", "invalid_type"),
        ("/v1/track", b'"track"', "", "invalid_type"),
        ("/v1/track", b'{"userId": "\xff"}', "", "invalid_utf8"),
        ("/v1/track", b"[" * 100 + b"]" * 100, "", "too_deep"),
        ("/v1/batch", b"{}", "batch", "required"),
        ("/v1/batch", b'{"batch": {}}', "batch", "invalid_type"),
        ("/v1/batch", b'{"batch": null}', "batch", "invalid_type"),
        ("/v1/batch", b'{"batch": [], "context": 1}', "context", "invalid_type"),
        ("/v1/batch", b'{"batch": [], "sentAt": "later"}', "sentAt", "invalid_format"),
        ("/v1/batch", b'{"batch": [], "sentAt": 5}', "sentAt", "invalid_type"),
        ("/v1/batch", b"nope", "", "invalid_json"),
        ("/v1/batch", b'{"batch": [' + b"{" * 70 + b"}" * 70 + b"]}", "", "too_deep"),
    ],
)
def test_malformed_requests_are_400(api: Api, path: str, content: bytes, field: str, code: str) -> None:
    key = api.key()
    response = api.client.post(path, content=content, headers={**basic(key), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    details = response.json()["details"]
    assert [(d["field"], d["code"]) for d in details] == [(field, code)]
    assert events(api, key) == []


def test_empty_batch_and_wrong_method(api: Api) -> None:
    key = api.key()
    assert post(api, "/v1/batch", {"batch": []}, key) == ok()
    assert api.client.get("/v1/track", headers=basic(key)).status_code == 405
