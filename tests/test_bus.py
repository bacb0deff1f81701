"""The Redis Streams bus (headwater.bus.redis) against a real redis-server, on each store: the
entry ids the dialects answer with, Redis stopped and started again during ingest, workers woken,
acknowledging and trimming, waiters woken through Redis, and no 500 while Redis is down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.bus import redis as bus_redis
from headwater.config import Settings
from headwater.partitions import partition_of
from headwater.processing import waiting
from headwater.processing.worker import CATCH_UP_SECONDS
from tests.conftest import SELECTED, Api, WorkerThread, flush
from tests.servers import Postgres, Redis

# The stores the selected backends run on, each here with the bus.
STORES = [store for store in ("sqlite", "postgres") if store in SELECTED or f"{store}+redis" in SELECTED]
TENANT = "acme"
PARTITIONS = 8


@pytest.fixture(params=STORES)
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis: Redis) -> Iterator[Settings]:
    flush(redis)
    settings = replace(Settings(), data_dir=tmp_path / "data", bus=redis.url, partitions=PARTITIONS)
    if request.param == "sqlite":
        yield settings
        return
    server: Postgres = request.getfixturevalue("postgres")
    database = server.new_database()
    try:
        yield replace(settings, store=server.url(database))
    finally:
        server.drop_database(database)


@pytest.fixture
def rc(redis: Redis) -> Iterator[redis_client.Redis]:
    """A client of the session's Redis."""
    with redis_client.Redis.from_url(redis.url, decode_responses=True) as c:
        yield c


def stream(partition: int) -> str:
    return f"headwater:events:{partition}"


def partition(subject: str, tenant: str = TENANT) -> int:
    return partition_of(tenant, "live", subject, PARTITIONS)


def entries(c: redis_client.Redis, partition: int) -> list[tuple[str, dict[str, str]]]:
    return [(entry_id, dict(fields)) for entry_id, fields in c.xrange(stream(partition))]


def until(check: Callable[[], Any], timeout: float = 60.0, show: Callable[[], Any] | None = None) -> Any:
    """`check()` once it is truthy; after `timeout`, an error that says what `show()` saw last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s" + ("" if show is None else f"; last seen: {show()!r}"))


def stored(api: Api, key: str, event_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/events/{event_id}", headers=api.as_(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def actions(api: Api, key: str) -> list[dict[str, Any]]:
    response = api.client.get("/v1/actions", params={"limit": 1000}, headers=api.as_(key))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def every_purchase_fires(api: Api, key: str) -> None:
    rule = {
        "name": "every purchase",
        "event_types": ["purchase"],
        "action": {"type": "recommend", "config": {"decisionFlowId": "df", "channel": "push"}},
    }
    response = api.client.post("/v1/triggers", json=rule, headers=api.as_(key))
    assert response.status_code == 201, response.text


def purchase(api: Api, key: str, subject: str, i: int) -> dict[str, Any]:
    """Seed 002's route: it waits for the triggers (through Redis, or the store while it is down)."""
    body = {"type": "purchase", "customerId": subject, "data": {"i": i}}
    response = api.client.post("/api/v1/events/ingest", json=body, headers=api.as_(key))
    assert response.status_code == 200, response.text
    assert [a["actionType"] for a in response.json()["actionsDispatched"]] == ["recommend"], response.text
    return dict(response.json())


def log_order(api: Api, key: str, subject: str) -> list[dict[str, Any]]:
    response = api.client.get("/v1/events", params={"subject": subject, "limit": 1000}, headers=api.as_(key))
    return sorted(response.json()["data"], key=lambda e: e["seq"])


def fired_once_each(api: Api, key: str, count: int) -> None:
    """Every purchase fired exactly once, now and a little later (a second application would show)."""
    until(lambda: len(actions(api, key)) >= count)
    time.sleep(1.0)
    fired = [a["event_id"] for a in actions(api, key)]
    assert (len(fired), len(set(fired))) == (count, count)


def test_stream_ids_are_the_entry_ids(settings: Settings, rc: redis_client.Redis) -> None:
    """Without a worker (so nothing is trimmed): 002's streamId and 003's message_id(s) are the
    entries' ids, each entry naming its event's offset and id; a duplicate answers `<ms>-<seq>`."""
    settings = replace(settings, sync_timeout=0.2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as http:
        api = Api(http, settings)
        key = api.key(TENANT)
        headers = api.as_(key)
        one = http.post("/api/v1/events/ingest", json={"type": "purchase", "customerId": "c1"}, headers=headers)
        assert one.status_code == 200, one.text
        single = http.post("/ingest/events", json={"event_name": "e", "participant_id": "c1"}, headers=headers)
        batch = http.post(
            "/ingest/events/batch",
            json={"events": [{"event_name": "e", "participant_id": s} for s in ("c1", "c2", "c3")]},
            headers=headers,
        )
        assert (single.status_code, batch.status_code) == (202, 202)
        events = http.get("/v1/events", params={"limit": 100}, headers=headers).json()["data"]
        events.sort(key=lambda e: e["seq"])
        assert len(events) == 5
        ids = [one.json()["streamId"], single.json()["message_id"], *batch.json()["message_ids"]]
        expected = {p: [] for p in range(PARTITIONS)}  # type: dict[int, list[tuple[str, dict[str, str]]]]
        for entry_id, event in zip(ids, events, strict=True):
            expected[partition(event["subject"])].append((entry_id, {"seq": str(event["seq"]), "id": event["id"]}))
        assert {p: entries(rc, p) for p in range(PARTITIONS)} == expected
        # A re-sent idempotency key: the original's offset-based id, and nothing published.
        first = {"event_name": "e", "participant_id": "c4", "idempotency_key": "k"}
        original = http.post("/ingest/events", json=first, headers=headers).json()
        again = http.post("/ingest/events", json=first, headers=headers).json()
        event = stored(
            api, key, http.get("/v1/events", params={"subject": "c4"}, headers=headers).json()["data"][0]["id"]
        )
        assert again == {"accepted": True, "message_id": f"{int(event['id'][4:16], 16)}-{event['seq']}"}
        assert [entry_id for entry_id, fields in entries(rc, partition("c4"))] == [original["message_id"]]


def test_redis_stopped_and_started_again_during_ingest(api: Api, redis: Redis, rc: redis_client.Redis) -> None:
    """While Redis is down every request is answered (no 500), `streamId` is null, 003 falls back
    to `<ms>-<seq>`, the worker goes on through the store and /readyz says the bus is degraded.
    Once Redis is back the catch-up publisher publishes what it missed, in log order, and every
    event fired its trigger exactly once."""
    key = api.key(TENANT)
    every_purchase_fires(api, key)
    p = partition("c1")
    # A group of the test's own that reads nothing: nothing is trimmed, the stream shows all.
    rc.xgroup_create(stream(p), "observer", id="0", mkstream=True)
    before = [purchase(api, key, "c1", i) for i in range(3)]
    assert api.client.get("/readyz").json() == {"status": "ready", "store": "ok", "bus": "ok"}
    # The catch-up publisher has looked at the partition (a Redis without its mark would start
    # after what the consumers have applied, and they go on through the store while it is down).
    last = log_order(api, key, "c1")[-1]["seq"]
    until(lambda: int(rc.hget(f"headwater:published:{p}", "seq") or 0) >= last)
    redis.stop()
    try:
        during = [purchase(api, key, "c1", i) for i in range(3, 6)]
        assert [r["streamId"] for r in during] == [None] * 3
        single = api.client.post(
            "/ingest/events", json={"event_name": "e", "participant_id": "c1"}, headers=api.as_(key)
        )
        assert single.status_code == 202, single.text
        waited = api.client.post(
            "/v1/events?wait=processed", json={"events": [{"type": "purchase", "subject": "c1"}]}, headers=api.as_(key)
        )
        assert waited.status_code == 200, waited.text
        ready = api.client.get("/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "degraded")
        assert ready.json()["bus"].startswith("unavailable: ")
    finally:
        redis.start()
    events = log_order(api, key, "c1")
    assert len(events) == 8
    expected = [{"seq": str(e["seq"]), "id": e["id"]} for e in events]
    until(lambda: len(entries(rc, p)) == len(events))
    got = entries(rc, p)
    assert [fields for _, fields in got] == expected  # in log order, each once
    assert [entry_id for entry_id, _ in got][:3] == [r["streamId"] for r in before]
    message_id = single.json()["message_id"]
    assert message_id == f"{int(events[6]['id'][4:16], 16)}-{events[6]['seq']}"
    assert api.client.get("/readyz").json() == {"status": "ready", "store": "ok", "bus": "ok"}
    fired_once_each(api, key, 7)


def test_worker_acknowledges_and_streams_are_trimmed(api: Api, rc: redis_client.Redis) -> None:
    """Once the workers' group has acknowledged every entry the stream is empty; another group
    keeps it from its first unacknowledged entry on."""
    key = api.key(TENANT)
    every_purchase_fires(api, key)
    p, q = partition("c1"), partition("c5")
    assert p != q
    rc.xgroup_create(stream(q), "observer", id="0", mkstream=True)
    for i in range(4):
        purchase(api, key, "c1", i)
        purchase(api, key, "c5", i)
    until(lambda: rc.xlen(stream(p)) == 0)
    assert [(g["name"], g["pending"]) for g in rc.xinfo_groups(stream(p))] == [("headwater", 0)]
    full = entries(rc, q)
    assert len(full) == 4
    ((_, read),) = rc.xreadgroup("observer", "me", {stream(q): ">"}, count=2)
    assert rc.xack(stream(q), "observer", read[0][0]) == 1
    until(lambda: entries(rc, q) == full[1:])
    time.sleep(1.0)  # and no further: the observer has the second pending
    assert entries(rc, q) == full[1:]
    fired_once_each(api, key, 8)


def test_a_trim_survives_a_group_acknowledging_meanwhile(redis: Redis, rc: redis_client.Redis) -> None:
    """The catch-up reads the groups (XINFO GROUPS), then each one's first pending entry; a
    worker that acknowledges in between leaves XPENDING with no first entry. The trim then keeps
    from what that group had received, and a later look trims the rest. (This once raised, and
    ended the catch-up of every partition for the rest of the worker's life.)"""
    flush(redis)
    name = stream(0)
    ids = [rc.xadd(name, {"seq": str(n), "id": f"evt_{n}"}) for n in range(1, 6)]
    rc.xgroup_create(name, "headwater", id="0")
    rc.xreadgroup("headwater", "w", {name: ">"}, count=3)
    stale = rc.xinfo_groups(name)
    assert [(g["pending"], g["last-delivered-id"]) for g in stale] == [(3, ids[2])]
    assert rc.xack(name, "headwater", *ids[:3]) == 3

    async def trim(groups: list[dict[str, Any]]) -> None:
        bus = bus_redis.RedisBus(redis.url)
        try:
            await bus.trim(name, ids[-1], groups)
        finally:
            await bus.close()

    asyncio.run(trim(stale))
    assert [entry_id for entry_id, _ in entries(rc, 0)] == ids[3:]
    rc.xreadgroup("headwater", "w", {name: ">"})
    assert rc.xack(name, "headwater", *ids[3:]) == 2
    asyncio.run(trim(rc.xinfo_groups(name)))
    assert entries(rc, 0) == []


def test_pending_entries_of_a_killed_worker_are_claimed(settings: Settings, rc: redis_client.Redis) -> None:
    """A worker SIGKILLed before its XACKs leaves entries pending in the group; the worker that
    takes the partition claims them, acknowledges them once its checkpoint passes them (the
    events themselves it reads from the store), and the stream is trimmed."""
    with TestClient(create_app(replace(settings, sync_timeout=0.1)), raise_server_exceptions=False) as http:
        api = Api(http, settings)
        key = api.key(TENANT)
        every_purchase_fires(api, key)
        p = partition("c1")
        for i in range(5):
            body = {"events": [{"type": "purchase", "subject": "c1", "data": {"i": i}}]}
            assert http.post("/v1/events", json=body, headers=api.as_(key)).status_code == 200
        rc.xgroup_create(stream(p), "headwater", id="0")
        rc.xreadgroup("headwater", "killed:1", {stream(p): ">"}, count=3)
        assert rc.xpending(stream(p), "headwater")["pending"] == 3
        with WorkerThread(settings):
            until(lambda: rc.xlen(stream(p)) == 0, show=lambda: (entries(rc, p), rc.xinfo_groups(stream(p))))
            assert rc.xpending(stream(p), "headwater")["pending"] == 0
            fired_once_each(api, key, 5)


def test_waiters_are_woken_through_redis(api: Api, rc: redis_client.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the store looked at only every 5 s but on a notice, `?wait=processed` answers within
    a fraction of that: the worker's notice through Redis woke it."""
    monkeypatch.setattr(waiting, "NOTICE_FALLBACK_SECONDS", 5.0)
    key = api.key(TENANT)
    every_purchase_fires(api, key)
    until(lambda: rc.pubsub_numsub("headwater:processed")[0][1] >= 1)  # the API listens
    # One untimed first: under CI's load the worker's first batch alone outlived a second.
    first = {"events": [{"type": "purchase", "subject": "warm-up"}]}
    assert api.client.post("/v1/events?wait=processed", json=first, headers=api.as_(key)).status_code == 200
    took = []
    for i in range(5):
        started = time.monotonic()
        body = {"events": [{"type": "purchase", "subject": f"c{i}"}]}
        response = api.client.post("/v1/events?wait=processed", json=body, headers=api.as_(key))
        took.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
        assert [m["trigger_name"] for m in response.json()["results"][0]["triggers_matched"]] == ["every purchase"]
    assert max(took) < 2.5, took  # half the 5 s the store is looked at otherwise


def test_events_an_api_process_never_published_are_caught_up(api: Api, rc: redis_client.Redis) -> None:
    """An API process that commits and dies before its XADD (here: one without the bus, on the
    same store): the catch-up publisher publishes its events, in log order, after those that
    were published, and each fires once."""
    key = api.key(TENANT)
    every_purchase_fires(api, key)
    p = partition("c1")
    rc.xgroup_create(stream(p), "observer", id="0", mkstream=True)
    published = purchase(api, key, "c1", 0)["streamId"]
    until(lambda: rc.exists(f"headwater:published:{p}"))  # else the mark starts after what is applied
    with TestClient(create_app(replace(api.settings, bus=None)), raise_server_exceptions=False) as silent:
        for i in range(1, 4):
            body = {"events": [{"type": "purchase", "subject": "c1", "data": {"i": i}}]}
            assert silent.post("/v1/events", json=body, headers=api.as_(key)).status_code == 200
    events = log_order(api, key, "c1")
    until(lambda: len(entries(rc, p)) == 4, show=lambda: (entries(rc, p), rc.hgetall(f"headwater:published:{p}")))
    got = entries(rc, p)
    assert (got[0][0], [fields for _, fields in got]) == (
        published,
        [{"seq": str(e["seq"]), "id": e["id"]} for e in events],
    )
    fired_once_each(api, key, 4)


def test_award_events_are_published_by_the_worker_that_appends_them(
    api: Api, rc: redis_client.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A challenge's award events (completed, badge, points) are published as the worker appends
    them, as the API publishes what it accepts: none is left for the catch-up publisher, which
    would wake the next level's consumers (a badge's own triggers) only at its next look."""
    caplog.set_level(logging.INFO, logger="headwater.bus")
    key = api.key(TENANT)
    p = partition("c1")
    rc.xgroup_create(stream(p), "observer", id="0", mkstream=True)
    badge = {"key": "first", "name": "First purchase"}
    assert api.client.post("/v1/badges", json=badge, headers=api.as_(key)).status_code == 201
    rule = {"name": "one purchase", "fact_type": "custom.purchase", "metric": {"count": True}, "target": 1}
    response = api.client.post(
        "/v1/challenges", json={**rule, "reward": {"badge": "first", "points": 10}}, headers=api.as_(key)
    )
    assert response.status_code == 201, response.text
    body = {"events": [{"type": "purchase", "subject": "c1"}]}
    response = api.client.post("/v1/events?wait=processed", json=body, headers=api.as_(key))
    assert response.status_code == 200, response.text
    events = until(lambda: (found := log_order(api, key, "c1")) and len(found) == 4 and found)
    assert sorted(e["type"] for e in events[1:]) == ["badge.awarded", "challenge.completed", "points.awarded"]
    expected = [{"seq": str(e["seq"]), "id": e["id"]} for e in events]
    until(lambda: [fields for _, fields in entries(rc, p)] == expected, show=lambda: (entries(rc, p), expected))
    time.sleep(2 * CATCH_UP_SECONDS)  # a catch-up look that found them missing would have published by now
    assert [fields for _, fields in entries(rc, p)] == expected  # each once
    assert [r.getMessage() for r in caplog.records if "Redis did not have" in r.getMessage()] == []
