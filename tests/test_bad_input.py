"""Bad input to POST /v1/events, through HTTP, on every backend.

Every case checks the whole response body and that nothing stored before the bad request
was lost (or added): `Ingest` seeds two events and compares GET /v1/events before and after.
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from tests.conftest import Api

SEEDS = [{"type": "seed", "idempotency_key": "seed-1"}, {"type": "seed", "subject": "s"}]
GZIP = {"Content-Encoding": "gzip"}


@dataclass
class Ingest:
    """POST /v1/events for one live admin key of tenant acme, with two events stored first."""

    api: Api
    key: str = ""
    before: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def seeded(cls, api: Api) -> Ingest:
        ingest = cls(api, api.key())
        response = ingest.post(json.dumps({"events": SEEDS}))
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 2
        ingest.before = ingest.stored()
        assert len(ingest.before) == 2
        return ingest

    def post(self, content: bytes | str | Iterable[bytes], headers: dict[str, str] | None = None) -> httpx.Response:
        return self.api.client.post(
            "/v1/events", content=content, headers={**self.api.as_(self.key), **(headers or {})}
        )

    def stored(self) -> list[dict[str, Any]]:
        """Every event of the key's tenant and mode, newest first, following the cursor."""
        events: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000}
        while True:
            response = self.api.client.get("/v1/events", params=params, headers=self.api.as_(self.key))
            assert response.status_code == 200, response.text
            page = response.json()
            events += page["data"]
            if page["next_cursor"] is None:
                return events
            params["cursor"] = page["next_cursor"]

    def new_events(self) -> list[dict[str, Any]]:
        """What was stored since seeding; asserts every seed is still there, unchanged."""
        now = self.stored()
        assert [e for e in now if e in self.before] == self.before
        return [e for e in now if e not in self.before]

    def assert_nothing_changed(self) -> None:
        assert self.stored() == self.before


@pytest.fixture
def ingest(api: Api) -> Ingest:
    return Ingest.seeded(api)


@pytest.fixture
def ingest_with(settings: Settings) -> Iterator[Callable[..., Ingest]]:
    """An `Ingest` on an app built with some settings changed (small limits keep tests fast)."""
    with ExitStack() as stack:

        def open_(**changes: Any) -> Ingest:
            custom = replace(settings, **changes)
            client = stack.enter_context(TestClient(create_app(custom), raise_server_exceptions=False))
            return Ingest.seeded(Api(client, custom))

        yield open_


def error(message: str, field: str = "", code: str = "invalid") -> dict[str, Any]:
    """A 400 body with one detail that repeats the message."""
    return {"error": message, "details": [{"field": field, "code": code, "message": message}]}


def rejected_one(field: str, code: str, message: str) -> dict[str, Any]:
    return {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "results": [
            {
                "index": 0,
                "status": "rejected",
                "id": None,
                "errors": [{"field": field, "code": code, "message": message}],
            }
        ],
    }


def accepted_one(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    event_id = body["results"][0]["id"]
    assert body == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"index": 0, "status": "accepted", "id": event_id, "errors": []}],
    }
    return str(event_id)


def too_large(limit: int) -> dict[str, Any]:
    return {"error": f"request body exceeds the limit of {limit} bytes", "details": []}


# Unreadable bodies: 400 for the whole request, nothing stored.

NOT_JSON = "request body is not valid JSON: "
NOT_OBJECT = error("request body must be a JSON object", code="invalid_type")
EVENTS_NOT_ARRAY = error("events must be an array of event objects", "events", "invalid_type")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b"hello",
            error(NOT_JSON + "JSON is malformed: invalid character (byte 0)", code="invalid_json"),
            id="not-json",
        ),
        pytest.param(
            b'{"type": "a"', error(NOT_JSON + "Input data was truncated", code="invalid_json"), id="truncated-json"
        ),
        pytest.param(
            b'{"type": "a"} {"type": "b"}',
            error(NOT_JSON + "JSON is malformed: trailing characters (byte 15)", code="invalid_json"),
            id="two-documents",
        ),
        pytest.param(
            b"", error('request body is empty: send an event object or {"events": [...]}', code="required"), id="empty"
        ),
        pytest.param(
            b" \r\n\t ",
            error('request body is empty: send an event object or {"events": [...]}', code="required"),
            id="blank",
        ),
        pytest.param(b'[{"type": "a"}]', NOT_OBJECT, id="top-array"),
        pytest.param(b'"purchase"', NOT_OBJECT, id="top-string"),
        pytest.param(b"42", NOT_OBJECT, id="top-number"),
        pytest.param(b"null", NOT_OBJECT, id="top-null"),
        pytest.param(b"true", NOT_OBJECT, id="top-bool"),
        pytest.param(b'{"events": {"type": "a"}}', EVENTS_NOT_ARRAY, id="events-object"),
        pytest.param(b'{"events": "a"}', EVENTS_NOT_ARRAY, id="events-string"),
        pytest.param(b'{"events": 3}', EVENTS_NOT_ARRAY, id="events-number"),
        pytest.param(b'{"events": null}', EVENTS_NOT_ARRAY, id="events-null"),
        pytest.param(b'{"events": []}', error("events must not be empty", "events", "too_short"), id="events-empty"),
        pytest.param(
            b'{"events": [{"type": "a"}], "batch_id": 7}',
            error("unknown field 'batch_id' in a batch body", "batch_id", "unknown_field"),
            id="batch-unknown-field",
        ),
        pytest.param(
            b'{"type": "a\x00b"}',
            error(NOT_JSON + "JSON is malformed: invalid character (byte 11)", code="invalid_json"),
            id="raw-nul-in-string",
        ),
        pytest.param(
            b'{"events": [{"type": "ok"}, {"type": "a", "data": {"x": "\x00"}}]}',
            error(NOT_JSON + "JSON is malformed: invalid character (byte 57)", code="invalid_json"),
            id="raw-nul-in-batch-data",
        ),
        pytest.param(
            b'{"type": "caf\xe9"}',
            error("request body is not valid UTF-8: invalid continuation byte at byte 13", code="invalid_utf8"),
            id="latin1-in-type",
        ),
        pytest.param(
            b'{"type": "a", "data": {"x": "\xff\xfe"}}',
            error("request body is not valid UTF-8: invalid start byte at byte 29", code="invalid_utf8"),
            id="bad-utf8-in-data",
        ),
        pytest.param(
            b'{"events": [{"type": "ok"}, {"type": "a", "data": {"\xc3": 1}}]}',
            error("request body is not valid UTF-8: invalid continuation byte at byte 52", code="invalid_utf8"),
            id="bad-utf8-in-batch-item",
        ),
        pytest.param(
            b'{"type": "a", "data": {"x": "\xed\xa0\x80"}}',
            error("request body is not valid UTF-8: invalid continuation byte at byte 29", code="invalid_utf8"),
            id="utf8-encoded-surrogate",
        ),
    ],
)
def test_unreadable_body_is_400_and_stores_nothing(ingest: Ingest, body: bytes, expected: dict[str, Any]) -> None:
    response = ingest.post(body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected
    ingest.assert_nothing_changed()


# Readable bodies with a bad event: HTTP 200, that event rejected with a field error.

TOO_LONG_128 = "Expected `str` of length <= 128"
TOO_LONG_256 = "Expected `str` of length <= 256"
DATA_NOT_OBJECT = ("data", "invalid_type", "data must be a JSON object")


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        pytest.param({}, ("type", "required", "Object missing required field `type`"), id="missing-type"),
        pytest.param({"subject": "s"}, ("type", "required", "Object missing required field `type`"), id="only-subject"),
        pytest.param({"type": 1}, ("type", "invalid_type", "Expected `str`, got `int`"), id="type-int"),
        pytest.param({"type": None}, ("type", "invalid_type", "Expected `str`, got `null`"), id="type-null"),
        pytest.param({"type": ["a"]}, ("type", "invalid_type", "Expected `str`, got `array`"), id="type-array"),
        pytest.param({"type": ""}, ("type", "too_short", "Expected `str` of length >= 1"), id="type-empty"),
        pytest.param({"type": "t" * 129}, ("type", "too_long", TOO_LONG_128), id="type-129"),
        pytest.param({"type": "é" * 129}, ("type", "too_long", TOO_LONG_128), id="type-129-non-ascii"),
        pytest.param(
            {"type": "a", "subject": 5},
            ("subject", "invalid_type", "Expected `str | null`, got `int`"),
            id="subject-int",
        ),
        pytest.param({"type": "a", "subject": "s" * 257}, ("subject", "too_long", TOO_LONG_256), id="subject-257"),
        pytest.param(
            {"type": "a", "source": ["web"]},
            ("source", "invalid_type", "Expected `str | null`, got `array`"),
            id="source-array",
        ),
        pytest.param({"type": "a", "source": "s" * 257}, ("source", "too_long", TOO_LONG_256), id="source-257"),
        pytest.param(
            {"type": "a", "channel": {}},
            ("channel", "invalid_type", "Expected `str | null`, got `object`"),
            id="channel-object",
        ),
        pytest.param({"type": "a", "channel": "c" * 257}, ("channel", "too_long", TOO_LONG_256), id="channel-257"),
        pytest.param(
            {"type": "a", "time": 1712916000},
            ("time", "invalid_type", "Expected `str | null`, got `int`"),
            id="time-int",
        ),
        pytest.param(
            {"type": "a", "idempotency_key": True},
            ("idempotency_key", "invalid_type", "Expected `str | null`, got `bool`"),
            id="idempotency-key-bool",
        ),
        pytest.param(
            {"type": "a", "idempotency_key": 12},
            ("idempotency_key", "invalid_type", "Expected `str | null`, got `int`"),
            id="idempotency-key-int",
        ),
        pytest.param(
            {"type": "a", "idempotency_key": ""},
            ("idempotency_key", "too_short", "Expected `str` of length >= 1"),
            id="idempotency-key-empty",
        ),
        pytest.param(
            {"type": "a", "idempotency_key": "k" * 257},
            ("idempotency_key", "too_long", TOO_LONG_256),
            id="idempotency-key-257",
        ),
        pytest.param({"type": "a", "data": [1, 2]}, DATA_NOT_OBJECT, id="data-array"),
        pytest.param({"type": "a", "data": "{}"}, DATA_NOT_OBJECT, id="data-string"),
        pytest.param({"type": "a", "data": 3.5}, DATA_NOT_OBJECT, id="data-number"),
        pytest.param({"type": "a", "data": False}, DATA_NOT_OBJECT, id="data-bool"),
        pytest.param(
            {"type": "a", "time": "yesterday"},
            ("time", "invalid_format", "not an ISO 8601 timestamp: 'yesterday'"),
            id="time-words",
        ),
        pytest.param(
            {"type": "a", "time": "2026-02-30T10:00:00Z"},
            ("time", "invalid_format", "not an ISO 8601 timestamp: '2026-02-30T10:00:00Z'"),
            id="time-feb-30",
        ),
        pytest.param(
            {"type": "a", "time": "2026-04-12T25:00:00Z"},
            ("time", "invalid_format", "not an ISO 8601 timestamp: '2026-04-12T25:00:00Z'"),
            id="time-hour-25",
        ),
        pytest.param(
            {"type": "a", "time": ""}, ("time", "invalid_format", "not an ISO 8601 timestamp: ''"), id="time-empty"
        ),
        pytest.param(
            {"type": "a", "time": "9999-12-31T23:59:59-05:00"},
            ("time", "invalid_format", "timestamp out of range: '9999-12-31T23:59:59-05:00'"),
            id="time-after-year-9999",
        ),
        pytest.param(
            {"type": "a", "time": "0001-01-01T00:00:00+01:00"},
            ("time", "invalid_format", "timestamp out of range: '0001-01-01T00:00:00+01:00'"),
            id="time-before-year-1",
        ),
        pytest.param(
            {"type": "a", "time": "99999-01-01T00:00:00Z"},
            ("time", "invalid_format", "not an ISO 8601 timestamp: '99999-01-01T00:00:00Z'"),
            id="time-year-99999",
        ),
        pytest.param(
            {"type": "a", "time": "2" * 65}, ("time", "too_long", "Expected `str` of length <= 64"), id="time-65-chars"
        ),
        pytest.param(
            {"type": "a", "user_id": "u1"},
            ("user_id", "unknown_field", "Object contains unknown field `user_id`"),
            id="unknown-field",
        ),
        pytest.param(
            {"type": "a", "Type": "b"},
            ("Type", "unknown_field", "Object contains unknown field `Type`"),
            id="unknown-field-case",
        ),
    ],
)
def test_bad_event_is_rejected_with_field_error(
    ingest: Ingest, event: dict[str, Any], problem: tuple[str, str, str]
) -> None:
    response = ingest.post(json.dumps(event))
    assert response.status_code == 200, response.text
    assert response.json() == rejected_one(*problem)
    ingest.assert_nothing_changed()

    # The same event inside a batch gets the same error, without the "events.N." path.
    response = ingest.post(json.dumps({"events": [event]}))
    assert response.status_code == 200, response.text
    assert response.json() == rejected_one(*problem)
    ingest.assert_nothing_changed()


@pytest.mark.parametrize(
    ("item", "got"),
    [("1", "int"), ('"purchase"', "str"), ("null", "null"), ('[{"type": "a"}]', "array"), ("true", "bool")],
)
def test_batch_item_that_is_not_an_object_is_rejected(ingest: Ingest, item: str, got: str) -> None:
    response = ingest.post(f'{{"events": [{item}]}}')
    assert response.status_code == 200, response.text
    assert response.json() == rejected_one("", "invalid_type", f"Expected `object`, got `{got}`")
    ingest.assert_nothing_changed()


def test_batch_with_bad_events_keeps_the_good_ones(ingest: Ingest) -> None:
    events: list[Any] = [
        {"type": "good", "subject": "g0", "time": "2030-01-01T00:00:00Z"},
        {"subject": "no type"},
        {"type": "good", "subject": "g2", "time": "2030-01-02T00:00:00Z", "idempotency_key": "g2"},
        {"type": "bad", "data": ["not", "an", "object"]},
        {"type": "bad", "time": "2030-13-01T00:00:00Z"},
        "not an event",
        {"type": "bad", "extra": True},
        {"type": "good", "subject": "g7", "time": "2030-01-03T00:00:00Z", "data": None},
        {"type": "good", "idempotency_key": "seed-1"},
        {"type": "x" * 129},
    ]
    response = ingest.post(json.dumps({"events": events}))
    assert response.status_code == 200, response.text
    body = response.json()
    ids = {r["index"]: r["id"] for r in body["results"] if r["status"] == "accepted"}
    assert sorted(ids) == [0, 2, 7]
    seed_1 = next(e["id"] for e in ingest.before if e["idempotency_key"] == "seed-1")

    def rejected(index: int, field: str, code: str, message: str) -> dict[str, Any]:
        return {
            "index": index,
            "status": "rejected",
            "id": None,
            "errors": [{"field": field, "code": code, "message": message}],
        }

    assert body == {
        "accepted": 3,
        "duplicates": 1,
        "rejected": 6,
        "results": [
            {"index": 0, "status": "accepted", "id": ids[0], "errors": []},
            rejected(1, "type", "required", "Object missing required field `type`"),
            {"index": 2, "status": "accepted", "id": ids[2], "errors": []},
            rejected(3, "data", "invalid_type", "data must be a JSON object"),
            rejected(4, "time", "invalid_format", "not an ISO 8601 timestamp: '2030-13-01T00:00:00Z'"),
            rejected(5, "", "invalid_type", "Expected `object`, got `str`"),
            rejected(6, "extra", "unknown_field", "Object contains unknown field `extra`"),
            {"index": 7, "status": "accepted", "id": ids[7], "errors": []},
            {"index": 8, "status": "duplicate", "id": seed_1, "errors": []},
            rejected(9, "type", "too_long", "Expected `str` of length <= 128"),
        ],
    }

    # GET /v1/events shows exactly the seeds plus the three good events, newest first.
    new = ingest.new_events()
    assert [(e["id"], e["subject"], e["time"], e["data"]) for e in new] == [
        (ids[7], "g7", "2030-01-03T00:00:00Z", {}),
        (ids[2], "g2", "2030-01-02T00:00:00Z", {}),
        (ids[0], "g0", "2030-01-01T00:00:00Z", {}),
    ]
    assert all(e["type"] == "good" for e in new)
    assert len(ingest.stored()) == 5


# Edge values that must be accepted.


def test_data_null_is_stored_as_empty_object(ingest: Ingest) -> None:
    event_id = accepted_one(ingest.post(b'{"type": "a", "data": null}'))
    stored = ingest.api.client.get(f"/v1/events/{event_id}", headers=ingest.api.as_(ingest.key)).json()
    assert stored["data"] == {}
    assert [e["id"] for e in ingest.new_events()] == [event_id]


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"type": "t" * 128}, id="type-128"),
        pytest.param({"type": "é" * 128}, id="type-128-non-ascii"),
        pytest.param({"type": "😀" * 128}, id="type-128-astral"),
        pytest.param(
            {
                "type": "a",
                "subject": "s" * 256,
                "source": "o" * 256,
                "channel": "c" * 256,
                "idempotency_key": "k" * 256,
            },
            id="all-256",
        ),
        pytest.param({"type": "a\u0000b", "subject": "\u0000", "data": {"\u0000": "x\u0000y"}}, id="nul-escapes"),
        pytest.param(
            {"type": "a", "data": {"text": 'quote " backslash \\ brace { bracket ['}}, id="specials-in-strings"
        ),
    ],
)
def test_edge_values_round_trip(ingest: Ingest, event: dict[str, Any]) -> None:
    event_id = accepted_one(ingest.post(json.dumps(event)))
    stored = ingest.api.client.get(f"/v1/events/{event_id}", headers=ingest.api.as_(ingest.key)).json()
    for name, value in event.items():
        assert stored[name] == value
    assert [e["id"] for e in ingest.new_events()] == [event_id]


# Batch size: at most 1,000 events (Settings.max_batch_events).


def test_1001_events_is_413_and_1000_is_accepted(ingest: Ingest) -> None:
    response = ingest.post(json.dumps({"events": [{"type": "a"}] * 1001}))
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": "a request may carry at most 1000 events; this one has 1001",
        "details": [{"field": "events", "code": "too_many", "message": "at most 1000 events per request"}],
    }
    ingest.assert_nothing_changed()

    response = ingest.post(json.dumps({"events": [{"type": "a", "subject": str(i)} for i in range(1000)]}))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1000
    assert len(ingest.new_events()) == 1000


def test_batch_limit_is_configurable(ingest_with: Callable[..., Ingest]) -> None:
    ingest = ingest_with(max_batch_events=3)
    response = ingest.post(json.dumps({"events": [{"type": "a"}] * 4}))
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": "a request may carry at most 3 events; this one has 4",
        "details": [{"field": "events", "code": "too_many", "message": "at most 3 events per request"}],
    }
    ingest.assert_nothing_changed()
    assert ingest.post(json.dumps({"events": [{"type": "a"}] * 3})).json()["accepted"] == 3
    assert len(ingest.new_events()) == 3


# Body size: at most Settings.max_body_bytes, after gzip is undone, enforced while reading.


def body_of_size(size: int) -> bytes:
    """A valid one-event body of exactly `size` bytes."""
    head, tail = b'{"type": "pad", "data": {"p": "', b'"}}'
    body = head + b"x" * (size - len(head) - len(tail))
    body += tail
    assert len(body) == size
    return body


def test_body_over_the_limit_by_content_length_is_413(ingest_with: Callable[..., Ingest]) -> None:
    ingest = ingest_with(max_body_bytes=2048)
    response = ingest.post(body_of_size(2049))
    assert response.request.headers["content-length"] == "2049"
    assert response.status_code == 413, response.text
    assert response.json() == too_large(2048)
    # The rest of the body is not read, so the connection cannot carry another request.
    assert response.headers["connection"] == "close"
    ingest.assert_nothing_changed()

    accepted_one(ingest.post(body_of_size(2048)))
    assert len(ingest.new_events()) == 1


def test_default_body_limit_is_5_mib(ingest: Ingest) -> None:
    response = ingest.post(body_of_size(5 * 1024 * 1024 + 1))
    assert response.status_code == 413, response.text
    assert response.json() == too_large(5_242_880)
    ingest.assert_nothing_changed()


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_body_over_the_limit_streamed_without_content_length_is_413(ingest_with: Callable[..., Ingest]) -> None:
    ingest = ingest_with(max_body_bytes=2048)
    response = ingest.post(chunks(body_of_size(2049), 100))
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413, response.text
    assert response.json() == too_large(2048)
    ingest.assert_nothing_changed()

    accepted_one(ingest.post(chunks(body_of_size(2048), 100)))
    assert len(ingest.new_events()) == 1


def test_body_over_the_limit_streamed_in_many_chunks_is_413(ingest: Ingest) -> None:
    response = ingest.post(chunks(body_of_size(5 * 1024 * 1024 + 1), 64 * 1024))
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json() == too_large(5_242_880)
    ingest.assert_nothing_changed()


def call_ingest(client: TestClient, key: str, body: Iterator[bytes], headers: dict[str, str]) -> tuple[int, Any, int]:
    """POST /v1/events straight through ASGI, counting how many body chunks the app pulled. It
    runs on the client's own event loop: the app's store (asyncpg's pool) belongs to that loop."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(body, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = [(b"authorization", f"Bearer {key}".encode()), (b"transfer-encoding", b"chunked")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    assert client.portal is not None, "the client is not started"
    client.portal.call(client.app, scope, receive, send)
    status = sent[0]["status"]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(content), pulled


def endless(chunk: bytes, most: int = 100_000) -> Iterator[bytes]:
    for _ in range(most):
        yield chunk


def test_streamed_body_is_cut_off_once_past_the_limit(ingest_with: Callable[..., Ingest]) -> None:
    """The limit is enforced while reading: the app stops pulling chunks right after the limit."""
    ingest = ingest_with(max_body_bytes=4096)
    body = endless(b" " * 512)
    status, content, pulled = call_ingest(ingest.api.client, ingest.key, body, {})
    assert (status, content) == (413, too_large(4096))
    assert pulled == 4096 // 512 + 1
    ingest.assert_nothing_changed()


# gzip


def test_gzip_body_is_accepted(ingest: Ingest) -> None:
    event_id = accepted_one(ingest.post(gzip.compress(b'{"type": "zipped", "data": {"n": 1}}'), GZIP))
    batch = {"events": [{"type": "zipped", "subject": str(i)} for i in range(50)]}
    response = ingest.post(chunks(gzip.compress(json.dumps(batch).encode()), 64), {"Content-Encoding": "GZIP"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 50
    new = ingest.new_events()
    assert len(new) == 51
    assert new[-1]["id"] == event_id and new[-1]["data"] == {"n": 1}


def test_identity_content_encoding_is_accepted(ingest: Ingest) -> None:
    accepted_one(ingest.post(b'{"type": "plain"}', {"Content-Encoding": "identity"}))
    assert len(ingest.new_events()) == 1


def test_gzip_limit_counts_inflated_bytes(ingest_with: Callable[..., Ingest]) -> None:
    ingest = ingest_with(max_body_bytes=2048)
    compressed = gzip.compress(body_of_size(2049))
    assert len(compressed) < 200
    response = ingest.post(compressed, GZIP)
    assert response.status_code == 413, response.text
    assert response.json() == too_large(2048)
    ingest.assert_nothing_changed()

    accepted_one(ingest.post(gzip.compress(body_of_size(2048)), GZIP))
    assert len(ingest.new_events()) == 1


def empty_deflate_blocks(size: int) -> bytes:
    """`size` bytes of a gzip stream that inflates to nothing: the header, then empty stored blocks."""
    stream = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x00\x00\x00\xff\xff" * (size // 5)
    return stream[:size]


def compressed_too_large(limit: int) -> dict[str, Any]:
    return {"error": f"compressed request body exceeds the limit of {limit} bytes", "details": []}


def test_gzip_limit_counts_compressed_bytes_too(ingest_with: Callable[..., Ingest]) -> None:
    """A stream that inflates to next to nothing is cut off at the compressed limit, chunk by chunk."""
    ingest = ingest_with(max_body_bytes=1_000_000, max_compressed_body_bytes=4096)
    body = chunks(empty_deflate_blocks(1_000_000), 1024)
    status, content, pulled = call_ingest(ingest.api.client, ingest.key, body, GZIP)
    assert (status, content, pulled) == (413, compressed_too_large(4096), 5)
    response = ingest.post(empty_deflate_blocks(4097), GZIP)  # declared: refused before reading
    assert (response.status_code, response.json()) == (413, compressed_too_large(4096))
    assert response.headers["connection"] == "close"
    ingest.assert_nothing_changed()
    # Under both limits, it is read as usual.
    accepted_one(ingest.post(gzip.compress(body_of_size(3000)), GZIP))


def test_the_compressed_limit_defaults_to_the_body_limit(ingest: Ingest) -> None:
    body = chunks(empty_deflate_blocks(6 * 1024 * 1024), 65536)
    status, content, pulled = call_ingest(ingest.api.client, ingest.key, body, GZIP)
    assert (status, content, pulled) == (413, compressed_too_large(5_242_880), 81)  # 81 * 64 KiB > 5 MiB
    ingest.assert_nothing_changed()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """100 MB of zeros, gzipped (about 100 KB), built without holding the 100 MB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(100)]
    parts.append(packer.flush())
    return b"".join(parts)


def test_gzip_bomb_is_413_quickly_without_inflating_it(ingest: Ingest, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 200_000
    tracemalloc.start()
    try:
        started = time.perf_counter()
        response = ingest.post(gzip_bomb, GZIP)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json() == too_large(5_242_880)
    # Inflating all of it would take 100 MB and far longer; the limit is 5 MiB.
    assert peak < 30 * 1024 * 1024, peak
    assert elapsed < 2.0, elapsed
    ingest.assert_nothing_changed()


def test_streamed_gzip_bomb_is_cut_off_at_the_first_chunk(ingest: Ingest, gzip_bomb: bytes) -> None:
    status, content, pulled = call_ingest(ingest.api.client, ingest.key, chunks(gzip_bomb, 16 * 1024), GZIP)
    assert (status, content) == (413, too_large(5_242_880))
    assert pulled == 1  # 16 KB of it already inflates past 5 MiB; the other ~80 KB are never read
    ingest.assert_nothing_changed()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(gzip.compress(b'{"type": "a"}')[:-6], "gzip body is truncated", id="truncated"),
        pytest.param(gzip.compress(b'{"type": "a"}')[:12], "gzip body is truncated", id="header-only"),
        pytest.param(b"", "gzip body is truncated", id="empty"),
        pytest.param(
            b'{"type": "a"}',
            "gzip body is not valid: Error -3 while decompressing data: incorrect header check",
            id="not-gzip",
        ),
        pytest.param(
            zlib.compress(b'{"type": "a"}'),
            "gzip body is not valid: Error -3 while decompressing data: incorrect header check",
            id="zlib-not-gzip",
        ),
        pytest.param(
            gzip.compress(b'{"type": "a"}')[:-8] + b"\x00\x00\x00\x00\x0d\x00\x00\x00",
            "gzip body is not valid: Error -3 while decompressing data: incorrect data check",
            id="bad-crc",
        ),
        pytest.param(
            gzip.compress(b'{"type": "a"}') + b"garbage",
            "gzip body has trailing data after the compressed stream",
            id="trailing-data",
        ),
    ],
)
def test_broken_gzip_is_400(ingest: Ingest, body: bytes, message: str) -> None:
    response = ingest.post(body, GZIP)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": message, "details": []}
    ingest.assert_nothing_changed()


@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "compress", "gzip, br", "x-gzip"])
def test_unsupported_content_encoding_is_415(ingest: Ingest, encoding: str) -> None:
    response = ingest.post(gzip.compress(b'{"type": "a"}'), {"Content-Encoding": encoding})
    assert response.status_code == 415, response.text
    assert response.json() == {"error": f"unsupported Content-Encoding {encoding!r}: use gzip or none", "details": []}
    ingest.assert_nothing_changed()


# Nesting: a body may nest objects/arrays at most 64 deep (the event object is level 1).


def objects(depth: int) -> str:
    return '{"k":' * (depth - 1) + "{}" + "}" * (depth - 1)


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def alternating(depth: int) -> str:
    """Objects and arrays in turn: {"k":[{"k":[...]}]}."""
    opens = ['{"k":' if level % 2 == 0 else "[" for level in range(depth - 1)]
    closes = ["}" if level % 2 == 0 else "]" for level in range(depth - 1)]
    innermost = "{}" if (depth - 1) % 2 == 0 else "[]"
    return "".join(opens) + innermost + "".join(reversed(closes))


def event_of_depth(depth: int, shape: Callable[[int], str]) -> str:
    """One event whose body nests exactly `depth` deep: the event, `data`, then `shape`."""
    return '{"type": "deep", "data": {"k": ' + shape(depth - 2) + "}}"


TOO_DEEP = error("JSON nests deeper than 64 levels", code="too_deep")


@pytest.mark.parametrize("shape", [objects, arrays, alternating])
def test_nesting_64_deep_is_accepted_and_65_is_400(ingest: Ingest, shape: Callable[[int], str]) -> None:
    response = ingest.post(event_of_depth(65, shape))
    assert response.status_code == 400, response.text
    assert response.json() == TOO_DEEP
    ingest.assert_nothing_changed()

    body = event_of_depth(64, shape)
    event_id = accepted_one(ingest.post(body))
    stored = ingest.api.client.get(f"/v1/events/{event_id}", headers=ingest.api.as_(ingest.key)).json()
    assert stored["data"] == json.loads(body)["data"]
    assert [e["id"] for e in ingest.new_events()] == [event_id]


@pytest.mark.parametrize("shape", [objects, arrays, alternating])
def test_nesting_counts_the_batch_wrapper(ingest: Ingest, shape: Callable[[int], str]) -> None:
    # {"events": [ ... ]} adds two levels around each event.
    response = ingest.post('{"events": [' + event_of_depth(63, shape) + "]}")
    assert response.status_code == 400, response.text
    assert response.json() == TOO_DEEP
    ingest.assert_nothing_changed()

    response = ingest.post('{"events": [' + event_of_depth(62, shape) + "]}")
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    assert len(ingest.new_events()) == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"type": "a", "data": {"k": ' + arrays(100_000) + "}}", id="arrays-in-data"),
        pytest.param('{"type": "a", "data": ' + objects(100_000) + "}", id="objects-in-data"),
        pytest.param(arrays(100_000), id="top-level-arrays"),
        pytest.param('{"type": "a", "data": {"k": ' + "[" * 100_000, id="unclosed"),
        pytest.param('{"events": [' + '{"type": "a", "data": {"k": ' + arrays(100_000) + "}}]}", id="in-batch"),
    ],
)
def test_nesting_100000_deep_is_400_not_500(ingest: Ingest, body: str) -> None:
    response = ingest.post(body)
    assert response.status_code == 400, response.text
    assert response.json() == TOO_DEEP
    ingest.assert_nothing_changed()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"text": "[" * 200 + "{" * 200}, id="openers-in-string"),
        pytest.param({"text": "]" * 100 + "}" * 100 + "[" * 100}, id="closers-in-string"),
        pytest.param({"[" * 100: "{" * 100}, id="brackets-in-key"),
        pytest.param({"a": '\\"[[[[' * 30, "b": '"' + "{" * 80}, id="escaped-quotes-then-brackets"),
        pytest.param({"a": "\\", "b": "[" * 100, "c": "\\\\"}, id="escaped-backslash-before-quote"),
        pytest.param({"a": '\n"', "b": [[1]] * 70}, id="escape-then-escaped-quote"),
        pytest.param({"a": '\t\\"[', "b": [{"c": '\r"'}] * 70}, id="escapes-mixed"),
        pytest.param({"a": "\u005c", "list": [{"x": "]]]"}] * 80}, id="wide-not-deep"),
    ],
)
def test_brackets_inside_strings_do_not_count_as_nesting(ingest: Ingest, data: dict[str, Any]) -> None:
    body = json.dumps({"type": "strings", "data": data})
    assert body.count("[") + body.count("{") > 64
    event_id = accepted_one(ingest.post(body))
    stored = ingest.api.client.get(f"/v1/events/{event_id}", headers=ingest.api.as_(ingest.key)).json()
    assert stored["data"] == data
    assert [e["id"] for e in ingest.new_events()] == [event_id]


@pytest.mark.parametrize(
    "template",
    [
        # A string that ends in an escaped quote right after another escape (`\n\"`) must
        # not throw the quote pairing off and hide the nesting between two such strings.
        pytest.param(
            '{"type": "a", "data": {"a": "\\n\\"", "b": %s, "c": "\\n\\""}}', id="escape-before-escaped-quote"
        ),
        pytest.param('{"type": "a", "data": {"a": "\\\\", "b": %s, "c": "\\\\"}}', id="escaped-backslash"),
        pytest.param('{"type": "a", "data": {"a": "\\\\\\"[", "b": %s}}', id="escaped-backslash-and-quote"),
    ],
)
def test_strings_with_escapes_cannot_hide_deep_nesting(ingest: Ingest, template: str) -> None:
    body = template % arrays(100)
    json.loads(body)  # the body is valid JSON, just too deep
    response = ingest.post(body)
    assert response.status_code == 400, response.text
    assert response.json() == TOO_DEEP
    ingest.assert_nothing_changed()
