"""Faults of the servers Headwater runs on, under load, with real servers and a real
`headwater serve`: PostgreSQL stopped and started again while clients send events. (Redis
stopped and started again: tests/test_bus.py.)

What must hold: while the store is down every request is a 503 with `Retry-After` (never a
500, never an acknowledgement of an event that was not committed); once it is back, the same
server process goes on without a restart, its worker too; and after the clients retry what was
refused, every event is stored once and processed once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, run_cli
from tests.servers import Postgres
from tests.test_topology import every_page


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A server of the test's own: it is stopped and started again."""
    server = Postgres().start()
    try:
        server.sql("postgres", "CREATE DATABASE headwater")
        yield server
    finally:
        server.close()


class Sender(threading.Thread):
    """Single events, one after the other, each with its own idempotency key; every answer kept."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.answers: list[tuple[str, httpx.Response]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.client:
            i = 0
            while not self.done.is_set():
                key = f"k{i}"
                self.answers.append((key, self.client.post("/v1/events", json=event(key))))
                i += 1

    def statuses_since(self, start: int) -> list[int]:
        return [response.status_code for _, response in self.answers[start:]]


def event(key: str) -> dict[str, Any]:
    return {"type": "buy", "subject": f"s{int(key[1:]) % 50}", "idempotency_key": key}


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def test_postgresql_stopped_during_load_is_503_and_recovered_from_without_a_restart(
    own_postgres: Postgres, server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    env = {"HEADWATER_STORE": own_postgres.url("headwater"), "HEADWATER_SYNC_TIMEOUT": "30"}
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", env=env).stdout.split()[-1]
    server = server_factory(tmp_path / "data", env)
    server.start()
    server.drain()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as admin:
        run_through_a_stop(own_postgres, server, admin, key)


def run_through_a_stop(own_postgres: Postgres, server: ServerProcess, admin: httpx.Client, key: str) -> None:
    rule = {"name": "every buy", "event_types": ["buy"], "action": {"type": "recommend", "config": {}}}
    trigger = admin.post("/v1/triggers", json=rule)
    assert trigger.status_code == 201, trigger.text
    sender = Sender(server.url, key)
    sender.start()
    wait_until(lambda: len(sender.answers) >= 200, 30, "200 events before the stop")

    own_postgres.stop()
    stopped_at = len(sender.answers)
    wait_until(lambda: sender.statuses_since(stopped_at).count(503) >= 20, 30, "503s while PostgreSQL is down")
    ready = httpx.get(server.url + "/readyz", timeout=30)
    assert ready.status_code == 503, ready.text
    assert ready.json()["error"].startswith("store not ready: ")
    assert ready.json()["store"].startswith("unavailable: ")
    own_postgres.start()
    restarted_at = len(sender.answers)
    wait_until(lambda: sender.statuses_since(restarted_at).count(200) >= 200, 60, "acknowledgements once it is back")
    sender.done.set()
    sender.join(30)
    assert httpx.get(server.url + "/readyz", timeout=30).json() == {"status": "ready", "store": "ok"}

    assert server.proc is not None and server.proc.poll() is None  # the same process throughout
    assert {response.status_code for _, response in sender.answers} == {200, 503}
    for _, response in sender.answers:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
            body = response.json()
            assert body["details"] == [] and body["error"].startswith("store unavailable: ")
    acknowledged = {key for key, response in sender.answers if response.status_code == 200}
    refused = [key for key, response in sender.answers if response.status_code == 503]
    # Nothing acknowledged is lost: each is in the log, once.
    stored = [e["idempotency_key"] for e in every_page(admin, "/v1/events", type="buy")]
    assert len(stored) == len(set(stored))
    assert acknowledged <= set(stored)
    # The clients retry what was refused: an event whose commit the 503 hid is a duplicate now.
    retried = admin.post("/v1/events?wait=processed", json={"events": [event(k) for k in refused]})
    assert retried.status_code == 200, retried.text
    assert {r["status"] for r in retried.json()["results"]} <= {"accepted", "duplicate"}
    every = {key for key, _ in sender.answers}
    stored = [e["idempotency_key"] for e in every_page(admin, "/v1/events", type="buy")]
    assert sorted(stored) == sorted(every)
    # And the worker, never restarted either, processed each once.
    actions = every_page(admin, "/v1/actions", trigger=trigger.json()["id"])
    assert len(actions) == len({a["event_id"] for a in actions}) == len(every)
