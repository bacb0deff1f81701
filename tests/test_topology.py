"""Processing in worker processes: the API alone (`serve --no-worker`) beside two `headwater
worker` processes, one of them killed with SIGKILL halfway through. On SQLite: one API process
and 20,000 events on one data dir. On PostgreSQL: two API processes (as on two machines, each
sent every other batch) and 50,000 events on one database.

What must hold: the workers split the partitions by lease; the survivor takes the dead
worker's partitions once their leases expire; and every effect of the events (sent with
resends of the same idempotency keys) exists exactly once: trigger actions, challenge
completions, badges, points, and the award events in the log.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, WorkerProcess, flush, run_cli
from tests.servers import Postgres, Redis

PER_SUBJECT = 100
LEASE_SECONDS = 3
ENV = {"HEADWATER_LEASE_SECONDS": str(LEASE_SECONDS), "HEADWATER_SYNC_TIMEOUT": "60"}


@dataclass
class Site:
    """Where the processes of a topology keep their data, and how many API processes it has."""

    data_dir: Path
    env: dict[str, str]
    apis: int
    subjects: int


@pytest.fixture(params=["sqlite", "postgres", "postgres+redis"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite":
        yield Site(tmp_path / "data", ENV, apis=1, subjects=200)
        return
    server: Postgres = request.getfixturevalue("postgres")
    database = server.new_database()
    env = {**ENV, "HEADWATER_STORE": server.url(database)}
    if request.param == "postgres+redis":
        bus: Redis = request.getfixturevalue("redis")
        flush(bus)
        env["HEADWATER_BUS"] = bus.url
    try:
        yield Site(tmp_path / "data", env, apis=2, subjects=500)
    finally:
        server.drop_database(database)


def status(site: Site) -> dict[str, Any]:
    result = run_cli("status", "--json", "--data-dir", str(site.data_dir), env=site.env)
    return dict(json.loads(result.stdout))


def owners(site: Site) -> dict[int, str | None]:
    """The owner of each partition, as `headwater status` reports it (the facts consumer's row)."""
    return {c["partition"]: c["owner"] for c in status(site)["consumers"] if c["name"] == "facts"}


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def every_page(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(path, params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        found += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


def define(client: httpx.Client) -> dict[str, str]:
    def post(path: str, body: dict[str, Any]) -> str:
        response = client.post(path, json=body)
        assert response.status_code == 201, response.text
        return str(response.json().get("id", ""))

    post("/v1/badges", {"key": "gold", "name": "Gold"})
    every_ten = post(
        "/v1/challenges",
        {"name": "ten", "fact_type": "custom.buy", "metric": {"count": True}, "target": 10, "repeatable": True,
         "reward": {"points": 5}},
    )  # fmt: skip
    once = post(
        "/v1/challenges",
        {"name": "25", "fact_type": "custom.buy", "metric": {"count": True}, "target": 25, "reward": {"badge": "gold"}},
    )
    every_buy = post(
        "/v1/triggers", {"name": "every buy", "event_types": ["buy"], "action": {"type": "recommend", "config": {}}}
    )
    every_completion = post(
        "/v1/triggers",
        {"name": "completions", "event_types": ["challenge.completed"], "action": {"type": "recommend", "config": {}}},
    )
    return {"every_ten": every_ten, "once": once, "every_buy": every_buy, "every_completion": every_completion}


def send(clients: httpx.Client | list[httpx.Client], events: list[dict[str, Any]]) -> None:
    """In batches of 1,000, each to the next of the clients (the API processes) in turn."""
    turns = itertools.cycle(clients if isinstance(clients, list) else [clients])
    for start in range(0, len(events), 1000):
        response = next(turns).post("/v1/events", json={"events": events[start : start + 1000]})
        assert response.status_code == 200, response.text
        assert {r["status"] for r in response.json()["results"]} <= {"accepted", "duplicate"}, response.text


def test_two_workers_split_the_partitions_and_survive_each_others_death(
    server_factory: type[ServerProcess], worker_factory: type[WorkerProcess], site: Site
) -> None:
    data_dir, subjects = site.data_dir, site.subjects
    created = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir), env=site.env)
    key = created.stdout.split()[-1]
    clients = []
    for _ in range(site.apis):
        server = server_factory(data_dir, site.env, args=("--no-worker",))
        server.start()
        clients.append(httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90))
    client = clients[-1]
    ids = define(client)
    first, second = worker_factory(data_dir, site.env).start(), worker_factory(data_dir, site.env).start()
    # Each takes its share: both hold partitions, and between them all eight.
    held = wait_until(
        lambda: (o := owners(site)) and set(o.values()) == {first.owner, second.owner} and o, 30, "a split"
    )
    assert len(held) == 8

    rng = random.Random(7)
    events = [
        {
            "type": "buy",
            "subject": f"s{i % subjects}",
            "idempotency_key": f"k{i}",
            "time": f"2026-03-01T{i // 24_000:02d}:{i // 400 % 60:02d}Z",
        }
        for i in range(subjects * PER_SUBJECT)
    ]
    half = len(events) // 2
    resent = rng.sample(events[:half], len(events) // 10)
    send(clients, events[:half] + resent[: len(resent) // 2])
    first.kill()  # halfway, mid-batch or not: whatever it had not committed is done again, once
    send(clients, events[half:] + resent[len(resent) // 2 :])

    # The survivor takes the dead worker's partitions once their leases expire.
    wait_until(lambda: set(owners(site).values()) == {second.owner}, LEASE_SECONDS * 5, "the survivor has all")
    settled = client.post(
        "/v1/events?wait=processed", json={"events": [{"type": "settle", "subject": f"s{i}"} for i in range(subjects)]}
    )
    assert settled.status_code == 200, settled.text
    assert all(r["status"] == "accepted" for r in settled.json()["results"])

    # Every buy fired its trigger once: 20,000 actions of 20,000 distinct events.
    buys = every_page(client, "/v1/actions", trigger=ids["every_buy"])
    assert len(buys) == len({a["event_id"] for a in buys}) == len({a["id"] for a in buys}) == subjects * PER_SUBJECT
    # Each participant completed "ten" ten times and "25" once: one award event, one action each.
    completions = every_page(client, "/v1/events", type="challenge.completed")
    assert len(completions) == subjects * (PER_SUBJECT // 10 + 1)
    assert len({(e["subject"], e["data"]["challenge_id"], e["data"]["occurrence"]) for e in completions}) == len(
        completions
    )
    reacted = every_page(client, "/v1/actions", trigger=ids["every_completion"])
    assert sorted(a["event_id"] for a in reacted) == sorted(e["id"] for e in completions)
    assert len(every_page(client, "/v1/events", type="points.awarded")) == subjects * PER_SUBJECT // 10
    assert len(every_page(client, "/v1/events", type="badge.awarded")) == subjects
    for i in range(subjects):
        person = client.get(f"/v1/participants/s{i}").json()
        assert person == {
            "participant_id": f"s{i}",
            "points": 5 * PER_SUBJECT // 10,
            "level": None,
            "badges": [
                {"badge": "gold", "awarded_at": person["badges"][0]["awarded_at"], "reason": f"challenge:{ids['once']}"}
            ],
            "challenges": [
                {"challenge_id": ids["every_ten"], "progress": PER_SUBJECT, "target": 10,
                 "completed_at": person["challenges"][0]["completed_at"], "streak": None},
                {"challenge_id": ids["once"], "progress": PER_SUBJECT, "target": 25,
                 "completed_at": person["challenges"][1]["completed_at"], "streak": None},
            ],
        }  # fmt: skip
    report = status(site)
    assert (
        report["head"] == subjects * PER_SUBJECT + len(completions) + subjects * PER_SUBJECT // 10 + subjects + subjects
    )
    assert all(c["lag"] == 0 for c in report["consumers"] if c["name"] != "catalog"), report
    second.stop()
    for each in clients:
        each.close()


def test_a_worker_killed_between_appending_awards_and_writing_its_batch_does_nothing_twice(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    """The one step of a batch outside its transaction: the award events it appends to the log
    before the effects and the checkpoint commit. The worker dies right there (a crash point);
    `serve` starts it again, and the batch is planned and applied again: its award events are
    duplicates by their keys, and every effect exists once."""
    data_dir = tmp_path / "data"
    marker = tmp_path / "crashed"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    server = server_factory(data_dir, {**ENV, "HEADWATER_CRASH_AT": f"after-append:{marker}"})
    server.start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90)
    ids = define(client)
    send(client, [{"type": "buy", "subject": "s1", "idempotency_key": f"k{i}"} for i in range(30)])
    settled = client.post("/v1/events?wait=processed", json={"type": "settle", "subject": "s1"})
    assert settled.status_code == 200, settled.text
    assert marker.read_text() == "after-append"  # it did die there
    completions = every_page(client, "/v1/events", type="challenge.completed")
    assert sorted(e["data"]["occurrence"] for e in completions) == ["1", "2", "3", "once"]
    assert len(every_page(client, "/v1/events", type="points.awarded")) == 3
    assert len(every_page(client, "/v1/events", type="badge.awarded")) == 1
    assert len(every_page(client, "/v1/actions", trigger=ids["every_buy"])) == 30
    assert len(every_page(client, "/v1/actions", trigger=ids["every_completion"])) == 4
    person = client.get("/v1/participants/s1").json()
    assert (person["points"], [b["badge"] for b in person["badges"]]) == (15, ["gold"])
    assert [c["progress"] for c in person["challenges"]] == [30, 30]
    client.close()
