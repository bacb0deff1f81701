"""CloudEvents over HTTP: requests made by the `cloudevents` SDK in structured, binary and
batched mode, read back through the native API; and the protocol's edges."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http, to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from headwater.dialects import cloudevents
from headwater.events import Rejection
from tests.conftest import Api

FORMAT = JSONFormat()
WHEN = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
BATCH_TYPE = "application/cloudevents-batch+json"


def make(data: dict[str, Any] | str | bytes | None = None, **attributes: Any) -> CloudEvent:
    base = {"type": "com.example.order.placed", "source": "/orders", "id": "A-1", "time": WHEN}
    return CloudEvent(attributes={**base, **attributes}, data=data)


def batch_of(*events: Any) -> HTTPMessage:
    """The SDK has no batch helper: the batch is the JSON array of each event's JSON format."""
    parts = [FORMAT.write(e) if isinstance(e, CloudEvent) else json.dumps(e).encode() for e in events]
    return HTTPMessage({"content-type": BATCH_TYPE}, b"[" + b",".join(parts) + b"]")


def structured(body: dict[str, Any] | bytes) -> HTTPMessage:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPMessage({"content-type": "application/cloudevents+json"}, content)


def send(api: Api, key: str, message: HTTPMessage, status: int = 202) -> dict[str, Any]:
    response = api.client.post("/v1/cloudevents", content=message.body, headers={**message.headers, **api.as_(key)})
    assert response.status_code == status, response.text
    return dict(response.json())


def result(*statuses: tuple[str, str | None]) -> dict[str, Any]:
    """The whole response body for these (status, id) results, none of them rejected."""
    return {
        "accepted": sum(s == "accepted" for s, _ in statuses),
        "duplicates": sum(s == "duplicate" for s, _ in statuses),
        "rejected": 0,
        "results": [{"index": i, "status": s, "id": id_, "errors": []} for i, (s, id_) in enumerate(statuses)],
    }


def rejected(field: str, code: str, message: str) -> dict[str, Any]:
    errors = [{"field": field, "code": code, "message": message}]
    return {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "results": [{"index": 0, "status": "rejected", "id": None, "errors": errors}],
    }


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["results"]]


def stored(api: Api, key: str, event_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key))
    assert response.status_code == 200, response.text
    event = dict(response.json())
    assert event.pop("received_at").endswith("Z")
    return event


def canonical(event_id: str, seq: int, data: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": "com.example.order.placed",
        "subject": None,
        "source": "/orders",
        "channel": None,
        "time": "2026-05-04T03:02:01.123456Z",
        "idempotency_key": '["/orders","A-1"]',
        "data": data,
        "tenant": "acme",
        "mode": "live",
        "seq": seq,
        **fields,
    }


def test_structured_mode_round_trip(api: Api) -> None:
    key = api.key()
    event = make(
        {"amount": 3, "items": [{"sku": "A"}]},
        subject="cust-1",
        dataschema="https://example.com/order.json",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        priority=5,
        urgent=True,
    )
    body = send(api, key, to_structured(event, FORMAT))
    assert body == result(("accepted", ids(body)[0]))
    assert stored(api, key, ids(body)[0]) == canonical(
        ids(body)[0],
        1,
        {
            "amount": 3,
            "items": [{"sku": "A"}],
            "cloudevents": {
                "dataschema": "https://example.com/order.json",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "priority": 5,
                "urgent": True,
            },
        },
        subject="cust-1",
    )


def test_binary_mode_round_trip(api: Api) -> None:
    key = api.key()
    event = make(
        {"amount": 3},
        subject='Zoë Ärger, 100% "quoted"',
        datacontenttype="application/json; charset=utf-8",
        region="eu1",
    )
    message = to_binary(event, FORMAT)
    assert message.headers["ce-subject"] == "Zo%C3%AB%20%C3%84rger,%20100%25%20%22quoted%22"
    body = send(api, key, message)
    assert stored(api, key, ids(body)[0]) == canonical(
        ids(body)[0], 1, {"amount": 3, "cloudevents": {"region": "eu1"}}, subject='Zoë Ärger, 100% "quoted"'
    )


@pytest.mark.parametrize(
    ("data", "content_type", "expected"),
    [
        (b"\x00\x01\xff", "application/octet-stream", {"data_base64": "AAH/"}),
        ("héllo", "text/plain; charset=utf-8", {"data": "héllo"}),
        (b"\xff\xfe", "text/plain", {"data_base64": "//4="}),
        ("<a>1</a>", "application/xml", {"data": "<a>1</a>"}),
        ("[1, 2]", "application/json", {"data": [1, 2]}),
        ('"just text"', "application/json", {"data": "just text"}),
        ("null", "application/json", {}),
        ('{"k": "v"}', "application/vnd.example+json", {"k": "v"}),
    ],
)
def test_binary_mode_data(api: Api, data: str | bytes, content_type: str, expected: dict[str, Any]) -> None:
    key = api.key()
    message = to_binary(make(data, datacontenttype=content_type), FORMAT)
    body = send(api, key, message)
    kept = {} if content_type == "application/json" else {"cloudevents": {"datacontenttype": content_type}}
    assert stored(api, key, ids(body)[0]) == canonical(ids(body)[0], 1, {**expected, **kept})


def test_binary_mode_without_content_type_or_body(api: Api) -> None:
    key = api.key()
    headers = to_binary(make(), FORMAT).headers
    assert "content-type" not in headers
    body = send(api, key, HTTPMessage(headers, b""))
    assert stored(api, key, ids(body)[0]) == canonical(ids(body)[0], 1, {})
    # A body without a content type that is not JSON is taken as opaque bytes.
    body = send(api, key, HTTPMessage({**headers, "ce-id": "A-2"}, b"{a: 1}"))
    assert stored(api, key, ids(body)[0])["data"] == {"data_base64": "e2E6IDF9"}


def without_content_type(message: HTTPMessage) -> HTTPMessage:
    return HTTPMessage({k: v for k, v in message.headers.items() if k != "content-type"}, message.body)


@pytest.mark.parametrize(
    "message",
    [
        to_binary(make({"amount": 3, "items": [{"sku": "A"}]}, datacontenttype="application/json"), FORMAT),
        HTTPMessage(to_binary(make(), FORMAT).headers, b'[1, "two"]'),  # (the SDK writes a list as its repr)
        to_binary(make(7, datacontenttype="application/json"), FORMAT),
        HTTPMessage(to_binary(make(), FORMAT).headers, json.dumps({"a": {"b": [1, None]}}, indent=2).encode()),
        HTTPMessage(to_binary(make(), FORMAT).headers, b'"quoted"'),
    ],
)
def test_binary_mode_without_content_type_reads_json_as_the_sdk_does(api: Api, message: HTTPMessage) -> None:
    key = api.key()
    sent = without_content_type(message)
    read = from_http(sent, FORMAT).get_data()
    assert read is not None and not isinstance(read, bytes)
    body = send(api, key, sent)
    expected = read if isinstance(read, dict) else {"data": read}
    assert stored(api, key, ids(body)[0]) == canonical(ids(body)[0], 1, expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"plain words", {"data_base64": "cGxhaW4gd29yZHM="}),
        (b"True", {"data_base64": "VHJ1ZQ=="}),
        (b"\x00\xff", {"data_base64": "AP8="}),
        # Too deep to read as JSON: bytes, not the 400 a body labelled JSON gets.
        (b"[" * 80 + b"]" * 80, {"data_base64": base64.b64encode(b"[" * 80 + b"]" * 80).decode()}),
    ],
)
def test_binary_mode_without_content_type_keeps_other_bodies_as_bytes(
    api: Api, content: bytes, expected: dict[str, Any]
) -> None:
    key = api.key()
    body = send(api, key, HTTPMessage(to_binary(make(), FORMAT).headers, content))
    assert stored(api, key, ids(body)[0]) == canonical(ids(body)[0], 1, expected)


def test_batched_mode_round_trip(api: Api) -> None:
    key = api.key()
    message = batch_of(
        make({"amount": 1}, id="B-1"),
        make("plain text", id="B-2", datacontenttype="text/plain"),
        make(b"\x00\x01", id="B-3", datacontenttype="application/octet-stream"),
        make(id="B-4", subject="s"),
        {"specversion": "1.0", "type": "t", "source": "/orders"},
        make(base64.b64encode(b'{"a": 1}').decode(), id="B-6"),
    )
    body = send(api, key, message)
    got = body["results"]
    assert (body["accepted"], body["rejected"]) == (5, 1)
    assert got[4] == {
        "index": 4,
        "status": "rejected",
        "id": None,
        "errors": [{"field": "id", "code": "required", "message": "Object missing required field `id`"}],
    }

    def expect(index: int, data: Any, **fields: Any) -> None:
        event_id = got[index]["id"]
        key_ = f'["/orders","B-{index + 1}"]'
        assert stored(api, key, event_id) == canonical(event_id, index + 1, data, idempotency_key=key_, **fields)

    expect(0, {"amount": 1})
    expect(1, {"data": "plain text", "cloudevents": {"datacontenttype": "text/plain"}})
    expect(2, {"data_base64": "AAE=", "cloudevents": {"datacontenttype": "application/octet-stream"}})
    expect(3, {}, subject="s")
    # A string is a string, even one that looks like base64.
    event_id = got[5]["id"]
    assert stored(api, key, event_id)["data"] == {"data": "eyJhIjogMX0="}

    listed = api.client.get("/v1/events", params={"source": "/orders"}, headers=api.as_(key)).json()["data"]
    assert [e["id"] for e in listed] == [got[i]["id"] for i in (5, 3, 2, 1, 0)]


def test_data_base64_is_read_by_its_content_type(api: Api) -> None:
    key = api.key()
    attributes = {"specversion": "1.0", "type": "t", "source": "/s", "id": "1"}
    encoded = base64.b64encode(b'{"amount": 7}').decode()
    body = send(api, key, structured({**attributes, "datacontenttype": "application/json", "data_base64": encoded}))
    assert stored(api, key, ids(body)[0])["data"] == {"amount": 7}
    text = base64.b64encode(b"not json").decode()
    body = send(
        api, key, structured({**attributes, "id": "2", "datacontenttype": "text/json", "data_base64": text}), 400
    )
    assert body["results"][0]["errors"][0]["code"] == "invalid_json"


def test_source_and_id_deduplicate(api: Api) -> None:
    key = api.key()
    first = ids(send(api, key, to_structured(make({"n": 1}), FORMAT)))[0]
    # The same event redelivered, in any mode, is a duplicate of the first.
    assert send(api, key, to_binary(make({"n": 2}), FORMAT)) == result(("duplicate", first))
    again = send(api, key, batch_of(make(id="A-2"), make(), make(id="A-2"), make(source="/other")))
    a2, other = again["results"][0]["id"], again["results"][3]["id"]
    assert again == result(("accepted", a2), ("duplicate", first), ("duplicate", a2), ("accepted", other))
    keys = [e["idempotency_key"] for e in api.client.get("/v1/events", headers=api.as_(key)).json()["data"]]
    assert sorted(keys) == ['["/orders","A-1"]', '["/orders","A-2"]', '["/other","A-1"]']
    # Joining source and id with a separator would make these two the same key.
    one = send(api, key, structured({"specversion": "1.0", "type": "t", "source": "a:b", "id": "c"}))
    two = send(api, key, structured({"specversion": "1.0", "type": "t", "source": "a", "id": "b:c"}))
    assert one["accepted"] == two["accepted"] == 1


VALID = {"specversion": "1.0", "type": "t", "source": "/s", "id": "1"}


@pytest.mark.parametrize(
    ("event", "field", "code", "message"),
    [
        ({k: v for k, v in VALID.items() if k != "specversion"}, "specversion", "required", "specversion is required"),
        ({**VALID, "specversion": "0.3"}, "specversion", "unsupported", 'specversion must be "1.0"'),
        ({**VALID, "specversion": 1.0}, "specversion", "invalid_type", "specversion must be a string"),
        ({k: v for k, v in VALID.items() if k != "id"}, "id", "required", "Object missing required field `id`"),
        ({k: v for k, v in VALID.items() if k != "source"}, "source", "required", None),
        ({k: v for k, v in VALID.items() if k != "type"}, "type", "required", None),
        ({**VALID, "type": ""}, "type", "too_short", None),
        ({**VALID, "type": "t" * 129}, "type", "too_long", None),
        ({**VALID, "id": 5}, "id", "invalid_type", None),
        ({**VALID, "source": None}, "source", "invalid_type", None),
        ({**VALID, "subject": ""}, "subject", "too_short", None),
        ({**VALID, "time": "yesterday"}, "time", "invalid_format", None),
        ({**VALID, "time": 1700000000}, "time", "invalid_type", None),
        ({**VALID, "dataschema": 3}, "dataschema", "invalid_type", None),
        ({**VALID, "myExt": "x"}, "myExt", "invalid_name", None),
        ({**VALID, "my_ext": "x"}, "my_ext", "invalid_name", None),
        ({**VALID, "ext": 1.5}, "ext", "invalid_type", None),
        ({**VALID, "ext": {"a": 1}}, "ext", "invalid_type", None),
        ({**VALID, "ext": [1]}, "ext", "invalid_type", None),
        ({**VALID, "ext": 2**31}, "ext", "out_of_range", None),
        ({**VALID, "data": {}, "data_base64": "AA=="}, "data_base64", "conflict", None),
        ({**VALID, "data_base64": "not base64!"}, "data_base64", "invalid_format", None),
        ({**VALID, "data_base64": 5}, "data_base64", "invalid_type", None),
        ({**VALID, "ext": "x", "data": {"cloudevents": 1}}, "data.cloudevents", "reserved", None),
    ],
)
def test_invalid_events_are_rejected_and_quarantined(
    api: Api, event: dict[str, Any], field: str, code: str, message: str | None
) -> None:
    key = api.key()
    body = send(api, key, structured(event), 400)
    error = body["results"][0]["errors"][0]
    assert body == rejected(field, code, message or error["message"])
    quarantined = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"]
    assert [(q["dialect"], q["reasons"], json.loads(q["raw"])) for q in quarantined] == [
        ("cloudevents", [error], event)
    ]
    assert api.client.get("/v1/events", headers=api.as_(key)).json()["data"] == []


def test_a_bad_event_does_not_sink_its_batch(api: Api) -> None:
    key = api.key()
    body = send(api, key, batch_of(VALID, {**VALID, "specversion": "0.3"}, 5, [VALID], {**VALID, "id": "2"}))
    assert [(r["status"], [e["code"] for e in r["errors"]]) for r in body["results"]] == [
        ("accepted", []),
        ("rejected", ["unsupported"]),
        ("rejected", ["invalid_type"]),
        ("rejected", ["invalid_type"]),
        ("accepted", []),
    ]
    # Nothing taken at all: 400, with the same body.
    body = send(api, key, batch_of({**VALID, "id": ""}, 7), 400)
    assert (body["accepted"], body["rejected"]) == (0, 2)
    # Only duplicates: nothing new, but nothing wrong either.
    assert send(api, key, batch_of(VALID))["duplicates"] == 1
    assert send(api, key, batch_of()) == result()


def test_optional_attributes_set_to_null_are_absent(api: Api) -> None:
    key = api.key()
    event = {**VALID, "subject": None, "time": None, "dataschema": None, "ext": None, "data": None}
    body = send(api, key, structured(event))
    got = stored(api, key, ids(body)[0])
    assert (got["subject"], got["data"]) == (None, {})


@pytest.mark.parametrize(
    ("headers", "field", "code"),
    [
        ({"ce-id": None}, "id", "required"),
        ({"ce-specversion": None}, "specversion", "required"),
        ({"ce-specversion": "0.3"}, "specversion", "unsupported"),
        ({"ce-my-ext": "x"}, "my-ext", "invalid_name"),
        ({"ce-myext": "%FF%FE"}, "myext", "invalid_encoding"),
        ({"ce-time": "noon"}, "time", "invalid_format"),
        ({"ce-data": "x"}, "data", "invalid_name"),
        ({"content-type": "application/json"}, "data", "invalid_json"),
    ],
)
def test_invalid_binary_events(api: Api, headers: dict[str, str | None], field: str, code: str) -> None:
    key = api.key()
    base = to_binary(make(b"\x01", datacontenttype="application/octet-stream"), FORMAT).headers
    merged = {k: v for k, v in {**base, **headers}.items() if v is not None}
    body = send(api, key, HTTPMessage(merged, b"\x01"), 400)
    assert [(e["field"], e["code"]) for e in body["results"][0]["errors"]] == [(field, code)]
    # Kept in the JSON format, so a replay reads it like a structured event.
    item = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"][0]
    assert (item["dialect"], item["reasons"]) == ("cloudevents", body["results"][0]["errors"])
    raw = json.loads(item["raw"])
    assert (raw["type"], raw["data_base64"]) == ("com.example.order.placed", "AQ==")


def test_a_binary_event_seen_twice_is_rejected(api: Api) -> None:
    key = api.key()
    base = list(to_binary(make({"a": 1}), FORMAT).headers.items())
    response = api.client.post(
        "/v1/cloudevents",
        content=b'{"a": 1}',
        headers=[*base, ("ce-id", "other"), ("Authorization", f"Bearer {key}")],
    )
    assert response.status_code == 400
    assert [(e["field"], e["code"]) for e in response.json()["results"][0]["errors"]] == [("id", "duplicate")]


def test_replay_reads_the_quarantined_event_again(api: Api) -> None:
    key = api.key()
    send(api, key, structured({**VALID, "time": "2026-02-30T00:00:00Z"}), 400)
    item = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"][0]
    replay = api.client.post("/v1/quarantine/replay", json={"ids": [item["id"]]}, headers=api.as_(key)).json()
    assert (replay["still_rejected"], replay["results"][0]["errors"][0]["field"]) == (1, "time")
    draft = cloudevents.read_item(item["raw"].replace("02-30", "02-28").encode())
    assert not isinstance(draft, Rejection)
    assert (draft.type, draft.source, draft.idempotency_key) == ("t", "/s", '["/s","1"]')


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("application/json", json.dumps(VALID).encode()),
        ("text/plain", b"hello"),
        ("application/cloudevents+xml", b"<event/>"),
        ("application/cloudevents-batch+protobuf", b"\x00"),
        (None, json.dumps(VALID).encode()),
    ],
)
def test_unsupported_content_types_are_415(api: Api, content_type: str | None, content: bytes) -> None:
    key = api.key()
    headers = api.as_(key) | ({"content-type": content_type} if content_type else {})
    response = api.client.post("/v1/cloudevents", content=content, headers=headers)
    assert response.status_code == 415
    assert response.json()["error"].endswith(
        "is not a CloudEvent: send application/cloudevents+json, application/cloudevents-batch+json, "
        "or binary mode (ce-specversion, ce-id, ce-source, ce-type headers)"
    )


@pytest.mark.parametrize(
    ("content_type", "content", "status", "code"),
    [
        ("application/cloudevents+json", b"", 400, "required"),
        ("application/cloudevents+json", b'{"id": ', 400, "invalid_json"),
        ("application/cloudevents+json", b"[]", 400, "invalid_type"),
        ("application/cloudevents+json", b'{"id": "\xff"}', 400, "invalid_utf8"),
        ("application/cloudevents+json", b'{"data": ' + b"[" * 80 + b"]" * 80 + b"}", 400, "too_deep"),
        ("application/cloudevents+json; charset=utf-8", b"5", 400, "invalid_type"),
        (BATCH_TYPE, b'{"events": []}', 400, "invalid_type"),
        (BATCH_TYPE, b"[{]", 400, "invalid_json"),
        (BATCH_TYPE, b"[" + b",".join([json.dumps(VALID).encode()] * 1001) + b"]", 413, "too_many"),
    ],
)
def test_malformed_bodies(api: Api, content_type: str, content: bytes, status: int, code: str) -> None:
    key = api.key()
    response = api.client.post(
        "/v1/cloudevents", content=content, headers={**api.as_(key), "content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert [d["code"] for d in response.json()["details"]] == [code]
    assert api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"] == []


def test_binary_json_body_nesting_is_limited(api: Api) -> None:
    key = api.key()
    message = to_binary(make(datacontenttype="application/json"), FORMAT)
    response = api.client.post(
        "/v1/cloudevents", content=b"[" * 80 + b"]" * 80, headers={**message.headers, **api.as_(key)}
    )
    assert (response.status_code, response.json()["details"][0]["code"]) == (400, "too_deep")


def test_authentication_and_webhook_handshake(api: Api) -> None:
    message = to_structured(make(), FORMAT)
    response = api.client.post("/v1/cloudevents", content=message.body, headers=message.headers)
    assert response.status_code == 401
    viewer = api.key(role="viewer")
    response = api.client.post("/v1/cloudevents", content=message.body, headers={**message.headers, **api.as_(viewer)})
    assert response.status_code == 403
    response = api.client.options("/v1/cloudevents", headers={"WebHook-Request-Origin": "eventemitter.example.com"})
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventemitter.example.com"
    assert response.headers["allow"] == "OPTIONS, POST"
