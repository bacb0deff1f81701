"""Numbers that no 64-bit float or integer holds (`1e400`, an integer of 5,000 digits), on every
ingest path: refused as a field error on the event (code `number_out_of_range`), never a 500,
never taking the other events of the request with them, whatever schema the type has."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from headwater.events import Event
from headwater.ids import new_event_id
from headwater.storage import open_store
from tests.conftest import Api, Carried, run_cli
from tests.dialects import message_id, quarantined, stored

MESSAGE = "number out of range: a float must be finite in 64 bits, an integer from -2^63 to 2^64-1"
SCHEMA = {"type": "object", "properties": {"amount": {"type": "number"}}}


def problem(field: str) -> dict[str, str]:
    return {"field": field, "code": "number_out_of_range", "message": MESSAGE}


def rejected_results(*fields: str, **extra: Any) -> dict[str, Any]:
    """The per-event result body (native, Segment, CloudEvents) of one event refused for `fields`."""
    result = {"index": 0, "status": "rejected", "id": None, "errors": [problem(field) for field in fields]}
    return {**extra, "accepted": 0, "duplicates": 0, "rejected": 1, "results": [result]}


@dataclass(frozen=True)
class IngestPath:
    """One ingest path: how to send events whose data is `data` (raw JSON text), and what it
    answers when the one event it carries is refused for `data.amount`."""

    name: str
    dialect: str
    post: Callable[[Api, str, list[str]], httpx.Response]
    status: int
    body: dict[str, Any]
    reason: str  # the refused number's field in the canonical event (the quarantine's reasons)


def post(api: Api, key: str, path: str, content: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return api.client.post(path, content=content, headers={**api.as_(key), **(headers or {})})


def native(event: str) -> str:
    return '{"type": "purchase", "subject": "u1", "data": ' + event + "}"


def data_event(event: str) -> str:
    return '{"event_type": "purchase", "payload": ' + event + "}"


def analytics(event: str) -> str:
    return (
        '{"event_id": "e1", "event_type": "purchase", "event_name": "buy", "event_time": "2026-04-12T10:00:00Z",'
        ' "user_id": "u1", "session_id": "s1", "page_name": "checkout", "commerce": ' + event + "}"
    )


def customer(event: str) -> str:
    return '{"type": "purchase", "customerId": "u1", "data": ' + event + "}"


def gamification(event: str) -> str:
    return '{"event_name": "purchase", "participant_id": "u1", "properties": ' + event + "}"


def segment(event: str) -> str:
    return '{"type": "track", "userId": "u1", "event": "purchase", "properties": ' + event + "}"


def cloud_event(event: str, index: int = 0) -> str:
    return f'{{"specversion": "1.0", "id": "c{index}", "source": "/shop", "type": "purchase", "data": {event}}}'


def batch(name: str, items: list[str]) -> str:
    return f'{{"{name}": [{", ".join(items)}]}}'


STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCHED = {"Content-Type": "application/cloudevents-batch+json"}

PATHS = [
    IngestPath(
        "native",
        "native",
        lambda api, key, data: post(api, key, "/v1/events", native(data[0])),
        200,
        rejected_results("data.amount"),
        "data.amount",
    ),
    IngestPath(
        "native-batch",
        "native",
        lambda api, key, data: post(api, key, "/v1/events", batch("events", [native(d) for d in data])),
        200,
        rejected_results("data.amount"),
        "data.amount",
    ),
    IngestPath(
        "000",
        "data_events",
        lambda api, key, data: post(
            api, key, "/api/openapi/v1/data/events", batch("events", [data_event(d) for d in data])
        ),
        400,
        {"error": "invalid events: nothing in this batch was stored", "details": [problem("events.0.payload.amount")]},
        "data.amount",
    ),
    IngestPath(
        "001",
        "analytics",
        lambda api, key, data: post(api, key, "/ingest", analytics(data[0])),
        400,
        {"error": "Invalid event", "details": [problem("commerce.amount")]},
        "data.commerce.amount",
    ),
    IngestPath(
        "002",
        "customer_events",
        lambda api, key, data: post(api, key, "/api/v1/events/ingest", customer(data[0])),
        400,
        {"error": "invalid event", "details": [problem("data.amount")]},
        "data.amount",
    ),
    IngestPath(
        "003",
        "gamification",
        lambda api, key, data: post(api, key, "/api/v1/ingest/events", gamification(data[0])),
        400,
        {"error": "invalid event", "details": [problem("properties.amount")]},
        "data.amount",
    ),
    IngestPath(
        "003-batch",
        "gamification",
        lambda api, key, data: post(
            api, key, "/api/v1/ingest/events/batch", batch("events", [gamification(d) for d in data])
        ),
        202,
        {"accepted": 0, "rejected": 1, "message_ids": [], "errors": [{"index": 0, **problem("properties.amount")}]},
        "data.amount",
    ),
    IngestPath(
        "003-sync",
        "gamification",
        lambda api, key, data: post(api, key, "/api/v1/ingest/events/sync", gamification(data[0])),
        400,
        {"error": "invalid event", "details": [problem("properties.amount")]},
        "data.amount",
    ),
    IngestPath(
        "segment",
        "segment",
        lambda api, key, data: post(api, key, "/v1/track", segment(data[0])),
        200,
        rejected_results("data.properties.amount", success=True),
        "data.properties.amount",
    ),
    IngestPath(
        "cloudevents",
        "cloudevents",
        lambda api, key, data: post(api, key, "/v1/cloudevents", cloud_event(data[0]), STRUCTURED),
        400,
        rejected_results("data.amount"),
        "data.amount",
    ),
]


def put_schema(api: Api, key: str, enforcement: str | None) -> None:
    if enforcement is not None:
        body = {"schema": SCHEMA, "enforcement": enforcement}
        response = api.client.put("/v1/schemas/purchase", json=body, headers=api.as_(key))
        assert response.status_code == 201, response.text


def reasons_in_quarantine(api: Api, key: str) -> list[tuple[str, str | None, list[dict[str, str]], Any]]:
    return [(q["dialect"], q["type"], q["reasons"], q["draft"]) for q in quarantined(api, key)]


@pytest.mark.parametrize("enforcement", [None, "soft", "strict"])
@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_an_out_of_range_number_is_refused_on_every_path(api: Api, path: IngestPath, enforcement: str | None) -> None:
    key = api.key()
    put_schema(api, key, enforcement)
    response = path.post(api, key, ['{"sku": "A", "amount": 1e400}'])
    assert (response.status_code, response.json()) == (path.status, path.body)
    assert stored(api, key) == []
    # Kept for the operator, without the unreadable draft: the item as sent is there as a string.
    assert reasons_in_quarantine(api, key) == [(path.dialect, "purchase", [problem(path.reason)], None)]


BATCH_PATHS = {
    "native-batch": lambda api, key, data: post(api, key, "/v1/events", batch("events", [native(d) for d in data])),
    "003-batch": PATHS[6].post,
    "segment-batch": lambda api, key, data: post(api, key, "/v1/batch", batch("batch", [segment(d) for d in data])),
    "cloudevents-batch": lambda api, key, data: post(
        api, key, "/v1/cloudevents", "[" + ", ".join(cloud_event(d, i) for i, d in enumerate(data)) + "]", BATCHED
    ),
}
GOOD_BAD_GOOD = ['{"amount": 5}', '{"amount": -1e400}', '{"amount": 7}']


@pytest.mark.parametrize("enforcement", [None, "soft", "strict"])
@pytest.mark.parametrize("name", list(BATCH_PATHS))
def test_a_batch_keeps_the_good_events_around_an_out_of_range_number(
    api: Api, carried: Carried, name: str, enforcement: str | None
) -> None:
    key = api.key()
    put_schema(api, key, enforcement)
    response = BATCH_PATHS[name](api, key, GOOD_BAD_GOOD)
    assert response.status_code in (200, 202), response.text
    events = stored(api, key)
    data = [e["data"]["properties"] if name == "segment-batch" else e["data"] for e in events]
    assert sorted(d["amount"] for d in data) == [5, 7]
    body = response.json()
    if name == "003-batch":
        expected: dict[str, Any] = {
            "accepted": 2,
            "rejected": 1,
            "message_ids": [message_id(carried, e) for e in reversed(events)],
            "errors": [{"index": 1, **problem("properties.amount")}],
        }
    else:
        ids = [e["id"] for e in sorted(events, key=lambda e: e["seq"])]
        reason = "data.properties.amount" if name == "segment-batch" else "data.amount"
        expected = {
            "accepted": 2,
            "duplicates": 0,
            "rejected": 1,
            "results": [
                {"index": 0, "status": "accepted", "id": ids[0], "errors": []},
                {"index": 1, "status": "rejected", "id": None, "errors": [problem(reason)]},
                {"index": 2, "status": "accepted", "id": ids[1], "errors": []},
            ],
        }
        if name == "segment-batch":
            expected = {"success": True, **expected}
    assert body == expected
    assert len(quarantined(api, key)) == 1


@pytest.mark.parametrize("enforcement", [None, "soft", "strict"])
def test_000_refuses_the_whole_batch_for_one_out_of_range_number(api: Api, enforcement: str | None) -> None:
    """Seed 000's batches are all or nothing (its README section): one refused event, nothing stored."""
    key = api.key()
    put_schema(api, key, enforcement)
    response = PATHS[2].post(api, key, GOOD_BAD_GOOD)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid events: nothing in this batch was stored", "details": [problem("events.1.payload.amount")]},
    )
    assert stored(api, key) == []
    assert reasons_in_quarantine(api, key) == [("data_events", "purchase", [problem("data.amount")], None)]


def test_the_limits_are_those_of_64_bit_floats_and_integers(api: Api) -> None:
    key = api.key()
    numbers = {
        "18446744073709551615": True,  # 2^64-1: an unsigned 64-bit integer
        "-9223372036854775808": True,  # -2^63
        "1.7976931348623157e308": True,  # the largest double
        "-1.7976931348623157e308": True,
        "1e-400": True,  # underflows to 0: a float, finite
        "0.000000000000000000000000000001": True,
        "123456789012345678.5": True,
        "1e20": True,  # a float literal: the float 1e20
        "18446744073709551616": False,  # 2^64
        "-9223372036854775809": False,  # -2^63 - 1: 19 digits
        "-9999999999999999999": False,
        "9999999999999999999": True,  # 19 digits, below 2^64
        "-1e-400": True,
        "1.7976931348623159e308": False,  # rounds to infinity
        "1e400": False,
        "-1e400": False,
        "1E+400": False,
        "9" * 5000: False,
        "-" + "1" * 30: False,
    }
    events = [native('{"n": ' + number + "}") for number in numbers]
    response = post(api, key, "/v1/events", batch("events", events))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted" if ok else "rejected" for ok in numbers.values()]
    assert {json.dumps(r["errors"]) for r in results if r["status"] == "rejected"} == {json.dumps([problem("data.n")])}
    assert len(stored(api, key)) == sum(numbers.values())


def test_the_field_points_at_each_number_inside_data(api: Api) -> None:
    key = api.key()
    items = '[{"sku": "A", "price": 1e999}, {"sku": "B", "price": 2}]'
    data = '{"items": ' + items + ', "meta": {"id": ' + "1" * 25 + '}, "ok": 1}'
    response = post(api, key, "/v1/events", native(data))
    assert response.json() == rejected_results("data.items.0.price", "data.meta.id")


def test_numbers_in_strings_and_ordinary_long_digit_runs_are_accepted(api: Api) -> None:
    """What the cheap scan flags (a long digit run, an exponent) is only checked, not refused."""
    key = api.key()
    data = {"phone": "1e400", "order": "2026-04-12-000123456789012345", "digits": "9" * 40, "n": 1.5e300}
    response = api.client.post("/v1/events", json={"type": "t", "data": data}, headers=api.as_(key))
    assert response.json()["accepted"] == 1
    assert [e["data"] for e in stored(api, key)] == [data]


def test_a_quarantined_out_of_range_number_is_still_refused_on_replay(api: Api) -> None:
    key = api.key()
    post(api, key, "/api/v1/ingest/events", gamification('{"amount": 1e400}'))
    [item] = api.client.get("/v1/quarantine", headers=api.as_(key)).json()["data"]
    response = api.client.post("/v1/quarantine/replay", json={"ids": [item["id"]]}, headers=api.as_(key))
    assert (response.status_code, response.json()) == (
        200,
        {
            "replayed": 0,
            "duplicates": 0,
            "still_rejected": 1,
            "results": [{"id": item["id"], "status": "rejected", "event_id": None, "errors": [problem("data.amount")]}],
        },
    )
    assert stored(api, key) == []


def test_events_import_refuses_out_of_range_numbers_line_by_line(tmp_path: Path) -> None:
    lines = [native('{"amount": 1}'), native('{"amount": 1e400}'), native('{"amount": 2}')]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")
    data_dir = str(tmp_path / "data")
    result = run_cli(
        "events", "import", str(path), "--tenant", "t", "--data-dir", data_dir, env={"COLUMNS": "200"}, check=False
    )
    assert result.returncode == 1  # some lines were rejected
    assert result.stdout.startswith("accepted 2, duplicates 0, rejected 1 in ")
    assert f"\nrejected line 2: data.amount: {MESSAGE}\n" in result.stderr
    exported = run_cli("events", "export", "--tenant", "t", "--data-dir", data_dir).stdout
    assert [json.loads(line)["data"] for line in exported.splitlines()] == [{"amount": 1}, {"amount": 2}]


def test_a_trigger_dry_run_refuses_an_out_of_range_number(api: Api) -> None:
    key = api.key()
    trigger = {"name": "t", "event_types": ["purchase"], "action": {"type": "recommend", "config": {}}}
    content = '{"trigger": ' + json.dumps(trigger) + ', "event": ' + native('{"a": 1e400}') + "}"
    response = post(api, key, "/v1/triggers/test", content)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid sample event", "details": [problem("event.data.a")]},
    )


def test_a_condition_value_out_of_range_is_refused(api: Api) -> None:
    key = api.key()
    condition = '{"field": "data.amount", "op": "gt", "value": 1' + "0" * 400 + "}"
    trigger = '{"name": "t", "event_types": ["p"], "conditions": ' + condition + ', "action": {"type": "recommend"}}'
    response = post(api, key, "/v1/triggers", trigger)
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "invalid trigger",
            "details": [{"field": "conditions.value", "code": "invalid", "message": "gt needs a number or a string"}],
        },
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("starts_at", "0001-01-01T00:00:00+01:00"), ("ends_at", "9999-12-31T23:59:59-05:00")],
)
def test_a_challenge_time_past_the_calendar_in_utc_is_400(api: Api, field: str, value: str) -> None:
    key = api.key()
    challenge = {"name": "c", "fact_type": "custom.p", "metric": {"count": True}, "target": 3, field: value}
    response = api.client.post("/v1/challenges", json=challenge, headers=api.as_(key))
    message = "out of range: in UTC it falls before year 1 or after year 9999"
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid challenge", "details": [{"field": field, "code": "invalid", "message": message}]},
    )
    assert api.client.get("/v1/challenges", headers=api.as_(key)).json() == {"data": []}


# Events that reached the log before ingest refused such numbers.


def append_straight_to_the_log(settings: Any, tenant: str, data: bytes) -> str:
    """An event written through the store itself, past the ingest check: as an older server stored it."""

    async def run() -> str:
        store = open_store(settings)
        await store.start()
        try:
            now = datetime.now(UTC)
            event = Event(
                new_event_id(), "purchase", "u1", None, None, now, now, None, msgspec.Raw(data), tenant, "live"
            )
            [outcome] = await store.log.append([event])
            return str(outcome.id)
        finally:
            await store.close()

    return asyncio.run(run())


def test_events_in_the_log_with_such_numbers_are_processed_as_non_numbers(api: Api) -> None:
    key, other = api.key(), api.key("other")
    big = {"name": "big", "event_types": ["purchase"], "conditions": {"field": "data.amount", "op": "gt", "value": 100}}
    big["action"] = {"type": "recommend", "config": {}}
    any_amount = {**big, "name": "any amount", "conditions": {"field": "data.amount", "op": "exists"}}
    for trigger, owner in ((big, key), (any_amount, key), (big, other)):
        assert api.client.post("/v1/triggers", json=trigger, headers=api.as_(owner)).status_code == 201
    challenges = {}
    for name, metric in (("spend", {"sum": "data.amount"}), ("buys", {"count": True})):
        body = {"name": name, "fact_type": "custom.purchase", "metric": metric, "target": 1000}
        challenges[name] = api.client.post("/v1/challenges", json=body, headers=api.as_(key)).json()["id"]
    bad = append_straight_to_the_log(api.settings, "acme", b'{"amount": 1e400, "n": -' + b"9" * 5000 + b"}")

    # Every consumer goes past it: what follows is processed, for this tenant and the others.
    response = api.client.post(
        "/v1/events?wait=processed",
        json={"type": "purchase", "subject": "u1", "data": {"amount": 150}},
        headers=api.as_(key),
    )
    assert response.status_code == 200, response.text
    assert [m["trigger_name"] for m in response.json()["results"][0]["triggers_matched"]] == ["big", "any amount"]
    response = api.client.post(
        "/v1/events?wait=processed", json={"type": "purchase", "data": {"amount": 101}}, headers=api.as_(other)
    )
    assert [m["trigger_name"] for m in response.json()["results"][0]["triggers_matched"]] == ["big"]
    customer = api.client.post(
        "/api/v1/events/ingest", json={"type": "purchase", "customerId": "u1"}, headers=api.as_(key)
    )
    assert customer.status_code == 200, customer.text
    sync = api.client.post(
        "/api/v1/ingest/events/sync", json={"event_name": "purchase", "participant_id": "u1"}, headers=api.as_(key)
    )
    assert sync.status_code == 200, sync.text

    # The bad event itself: its amount is there, but no number: `gt` is false, `exists` true;
    # it counts as a purchase, and adds nothing to a sum.
    actions = api.client.get("/v1/actions", params={"event": bad}, headers=api.as_(key)).json()["data"]
    assert [a["trigger_name"] for a in actions] == ["any amount"]
    progress = api.client.get("/v1/participants/u1", headers=api.as_(key)).json()["challenges"]
    assert {c["challenge_id"]: c["progress"] for c in progress} == {challenges["spend"]: 150, challenges["buys"]: 4}
