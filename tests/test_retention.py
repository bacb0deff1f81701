"""Retention: `PUT /v1/settings/retention` keeps a tenant's events N days (by event time) in the
key's mode; the one worker holding the retention lease deletes older events, what was derived
from them and quarantined items received before then, in small passes while ingest goes on.

Time is the worker's clock (`Worker(clock=...)`), moved forward here instead of waiting days."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.clock import system_now
from headwater.config import Settings
from headwater.processing.worker import Worker
from headwater.storage import open_store
from headwater.storage.records import RETENTION_LEASE
from tests.conftest import Api, WorkerThread
from tests.data_protection import get
from tests.processing import settle

BOUND_SECONDS = 120


class ClockedWorker:
    """A worker on a thread of its own whose clock is the system's moved by `offset`, running the
    retention policies every 0.1 s."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.offset = timedelta(0)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-clocked-worker", daemon=True)
        self.error: BaseException | None = None
        self.worker: Worker | None = None

    def now(self) -> datetime:
        return system_now() + self.offset

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.worker = worker = Worker(self.settings, clock=self.now, retention_interval=0.1)
            running = asyncio.create_task(worker.run(self._stop))
            await worker.started.wait()
            self._ready.set()
            await running

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by __exit__
            self.error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> ClockedWorker:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self.error is not None:
            raise self.error


@pytest.fixture
def clocked(settings: Settings) -> Iterator[tuple[Api, ClockedWorker]]:
    quiet = replace(settings, webhook_worker=False)
    with ClockedWorker(quiet) as worker, TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield Api(client, quiet), worker


def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {BOUND_SECONDS} s: {what}"
        time.sleep(0.05)


def ago(days: float) -> str:
    return (system_now() - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def present(api: Api, key: str, event_id: str) -> bool:
    return bool(get(api, key, f"/v1/events/{event_id}")[0] == 200)


def test_the_setting_is_per_tenant_and_mode_and_for_admins(clocked: tuple[Api, ClockedWorker]) -> None:
    api, _ = clocked
    live, test, other = api.key(), api.key(mode="test"), api.key(tenant="globex")
    assert get(api, live, "/v1/settings/retention") == (200, {"days": None})
    put = api.client.put("/v1/settings/retention", json={"days": 30}, headers=api.as_(live))
    assert (put.status_code, put.json()) == (200, {"days": 30})
    assert get(api, live, "/v1/settings/retention") == (200, {"days": 30})
    assert get(api, test, "/v1/settings/retention") == (200, {"days": None})
    assert get(api, other, "/v1/settings/retention") == (200, {"days": None})
    api.client.put("/v1/settings/retention", json={"days": 7}, headers=api.as_(test))
    assert get(api, test, "/v1/settings/retention") == (200, {"days": 7})
    assert get(api, live, "/v1/settings/retention") == (200, {"days": 30})
    forever = api.client.put("/v1/settings/retention", json={"days": None}, headers=api.as_(live))
    assert (forever.status_code, forever.json()) == (200, {"days": None})
    assert get(api, live, "/v1/settings/retention") == (200, {"days": None})
    for role in ("editor", "ingest", "viewer"):
        key = api.key(role=role)
        denied = {"error": f"the {role} role may not admin", "details": []}
        assert get(api, key, "/v1/settings/retention") == (403, denied)
        response = api.client.put("/v1/settings/retention", json={"days": 1}, headers=api.as_(key))
        assert (response.status_code, response.json()) == (403, denied)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"days": 0}, "invalid_type", "Expected `int` >= 1"),
        ({"days": -1}, "invalid_type", "Expected `int` >= 1"),
        ({"days": 36_501}, "invalid_type", "Expected `int` <= 36500"),
        ({"days": 1.5}, "invalid_type", "Expected `int | null`, got `float`"),
        ({"days": "30"}, "invalid_type", "Expected `int | null`, got `str`"),
        ({"days": True}, "invalid_type", "Expected `int | null`, got `bool`"),
        ({"days": [30]}, "invalid_type", "Expected `int | null`, got `array`"),
        ({}, "required", "Object missing required field `days`"),
        ({"days": 30, "hours": 1}, "unknown_field", "Object contains unknown field `hours`"),
    ],
)
def test_a_bad_setting_is_a_400(clocked: tuple[Api, ClockedWorker], body: Any, code: str, message: str) -> None:
    api, _ = clocked
    key = api.key()
    response = api.client.put("/v1/settings/retention", json=body, headers=api.as_(key))
    assert response.status_code == 400, response.text
    assert [(d["code"], d["message"]) for d in response.json()["details"]] == [(code, message)]
    assert get(api, key, "/v1/settings/retention") == (200, {"days": None})


def test_a_malformed_setting_body_is_a_400(clocked: tuple[Api, ClockedWorker]) -> None:
    api, _ = clocked
    key = api.key()
    oversized = b'{"days": 1' + b" " * api.settings.max_body_bytes + b"}"
    for body, status in ((b"", 400), (b"{", 400), (b"[1]", 400), (b"null", 400), (oversized, 413)):
        response = api.client.put("/v1/settings/retention", content=body, headers=api.as_(key))
        assert response.status_code == status, body[:20]
        assert set(response.json()) == {"error", "details"}
    assert get(api, key, "/v1/settings/retention") == (200, {"days": None})


def test_old_events_and_what_came_of_them_go_as_the_clock_moves(clocked: tuple[Api, ClockedWorker]) -> None:
    api, worker = clocked
    key, other_mode = api.key(), api.key(mode="test")
    rule = {"name": "t", "event_types": ["purchase"], "action": {"type": "award_points", "config": {"points": 1}}}
    assert api.client.post("/v1/triggers", json=rule, headers=api.as_(key)).status_code == 201
    schema = {"schema": {"type": "object", "required": ["amount"]}, "enforcement": "strict"}
    assert api.client.put("/v1/schemas/order", json=schema, headers=api.as_(key)).status_code == 201
    events = [
        {"type": "purchase", "subject": "alice", "time": ago(days), "idempotency_key": f"k{days}"}
        for days in (45, 20, 1)
    ]
    sent = api.client.post(
        "/v1/events", json={"events": [*events, {"type": "order", "data": {}}]}, headers=api.as_(key)
    ).json()["results"]
    old, middle, recent = (r["id"] for r in sent[:3])
    api.client.post("/v1/events", json={"events": events}, headers=api.as_(other_mode))
    settle(api, key)
    actions = {a["event_id"] for a in get(api, key, "/v1/actions")[1]["data"]}
    assert actions >= {old, middle, recent}
    assert len(get(api, key, "/v1/quarantine")[1]["data"]) == 1
    api.client.put("/v1/settings/retention", json={"days": 30}, headers=api.as_(key))

    def acted_on() -> set[str]:
        return {a["event_id"] for a in get(api, key, "/v1/actions")[1]["data"]} & {old, middle, recent}

    # The log goes first, its derived rows right after: wait for both.
    until(lambda: not present(api, key, old) and acted_on() == {middle, recent}, "the 45-day-old event is deleted")
    assert [present(api, key, e) for e in (middle, recent)] == [True, True]
    facts = get(api, key, "/v1/facts", participant="alice", fact_type="custom.purchase")[1]["data"]
    assert sorted(f["event_id"] for f in facts) == sorted([middle, recent])
    listed = get(api, key, "/v1/events", subject="alice", type="purchase")[1]["data"]
    assert [e["id"] for e in listed] == [recent, middle]
    # Its dedup key went with it: the same key is a new event now.
    again = api.client.post("/v1/events", json={**events[0], "time": ago(0)}, headers=api.as_(key)).json()
    [result] = again["results"]
    assert (again["accepted"], result["status"]) == (1, "accepted") and result["id"] != old

    worker.offset = timedelta(days=15)  # the 20-day-old event is now 35 days old
    until(lambda: not present(api, key, middle) and acted_on() == {recent}, "the 35-day-old event is deleted")
    assert present(api, key, recent) and len(get(api, key, "/v1/quarantine")[1]["data"]) == 1

    worker.offset = timedelta(days=31)  # everything is older than 30 days, the quarantined item too
    until(lambda: not present(api, key, recent), "the 32-day-old event is deleted")
    until(lambda: not get(api, key, "/v1/quarantine")[1]["data"], "the quarantined item is deleted")
    assert get(api, key, "/v1/events", subject="alice", type="purchase")[1]["data"] == []
    # The other mode keeps its events forever: it has no policy.
    assert len(get(api, other_mode, "/v1/events", subject="alice")[1]["data"]) == 3


def test_ingest_answers_while_a_large_deletion_runs(clocked: tuple[Api, ClockedWorker]) -> None:
    api, _ = clocked
    key = api.key()
    old = ago(60)
    for start in range(0, 20_000, 1000):
        batch = [{"type": "view", "subject": f"u{(start + i) % 50}", "time": old} for i in range(1000)]
        assert api.client.post("/v1/events", json={"events": batch}, headers=api.as_(key)).status_code == 200
    settle(api, key)
    catalog = {e["type"]: e["count"] for e in get(api, key, "/v1/event-types")[1]["data"]}  # all folded
    assert catalog["view"] == 20_000

    def old_left() -> bool:
        return bool(get(api, key, "/v1/events", type="view", limit=1)[1]["data"])

    api.client.put("/v1/settings/retention", json={"days": 30}, headers=api.as_(key))
    sent: list[str] = []
    during = 0
    deadline = time.monotonic() + BOUND_SECONDS
    while old_left():
        assert time.monotonic() < deadline, f"the deletion did not finish within {BOUND_SECONDS} s"
        response = api.client.post("/v1/events", json={"type": "fresh", "subject": "u1"}, headers=api.as_(key))
        assert response.status_code == 200, response.text
        sent.append(response.json()["results"][0]["id"])
        during += 1
    # Ingest went on while the old events were being deleted, and kept every new one.
    assert during >= 1
    kept = get(api, key, "/v1/events", type="fresh", limit=1000)[1]["data"]
    assert sorted(e["id"] for e in kept) == sorted(sent)

    # The catalog counts what is left (once the last pass has taken the events off): no `view` any more.
    def counted() -> dict[str, int]:
        return {e["type"]: e["count"] for e in get(api, key, "/v1/event-types")[1]["data"]}

    until(lambda: "view" not in counted(), "the catalog no longer counts the deleted events")
    assert counted() == {"fresh": len(sent), "settle": catalog["settle"]}


def retention_holder(settings: Settings) -> str | None:
    async def run() -> str | None:
        store = open_store(settings)
        await store.start()
        try:
            return (await store.derived.leases(system_now())).get(RETENTION_LEASE)
        finally:
            await store.close()

    return asyncio.run(run())


def test_one_worker_of_the_cluster_holds_the_retention_lease(settings: Settings) -> None:
    with WorkerThread(settings) as second:
        with ClockedWorker(settings) as first:
            assert first.worker is not None and second.worker is not None
            # The first to start takes it and keeps it while it lives; the loop runs there only.
            assert retention_holder(settings) == second.worker.owner
            assert [w.owner for w in (first.worker, second.worker) if w._retention is not None] == [second.worker.owner]
        assert retention_holder(settings) == second.worker.owner
    # A worker that stops hands its leases back: the next one takes the lease at once.
    with ClockedWorker(settings) as third:
        assert third.worker is not None
        owner = third.worker.owner
        until(lambda: retention_holder(settings) == owner, "another worker takes the lease")
