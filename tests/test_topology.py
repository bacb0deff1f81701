"""Processing in worker processes: the API alone (`serve --no-worker`) beside two `headwater
worker` processes on one data dir, one of them killed with SIGKILL halfway through.

What must hold: the workers split the partitions by lease; the survivor takes the dead
worker's partitions once their leases expire; and every effect of the 20,000 events (sent
with resends of the same idempotency keys) exists exactly once: trigger actions, challenge
completions, badges, points, and the award events in the log.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess, WorkerProcess, run_cli

SUBJECTS = 200
PER_SUBJECT = 100
RESENT = 2_000
LEASE_SECONDS = 3
ENV = {"HEADWATER_LEASE_SECONDS": str(LEASE_SECONDS), "HEADWATER_SYNC_TIMEOUT": "60"}


def status(data_dir: Path) -> dict[str, Any]:
    result = run_cli("status", "--json", "--data-dir", str(data_dir), env=ENV)
    return dict(json.loads(result.stdout))


def owners(data_dir: Path) -> dict[int, str | None]:
    """The owner of each partition, as `headwater status` reports it (the facts consumer's row)."""
    return {c["partition"]: c["owner"] for c in status(data_dir)["consumers"] if c["name"] == "facts"}


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


def send(client: httpx.Client, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        response = client.post("/v1/events", json={"events": events[start : start + 1000]})
        assert response.status_code == 200, response.text


def test_two_workers_split_the_partitions_and_survive_each_others_death(
    server_factory: type[ServerProcess], worker_factory: type[WorkerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    server = server_factory(data_dir, ENV, args=("--no-worker",))
    server.start()
    client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90)
    ids = define(client)
    first, second = worker_factory(data_dir, ENV).start(), worker_factory(data_dir, ENV).start()
    # Each takes its share: both hold partitions, and between them all eight.
    held = wait_until(
        lambda: (o := owners(data_dir)) and set(o.values()) == {first.owner, second.owner} and o, 30, "a split"
    )
    assert len(held) == 8

    rng = random.Random(7)
    events = [
        {
            "type": "buy",
            "subject": f"s{i % SUBJECTS}",
            "idempotency_key": f"k{i}",
            "time": f"2026-03-01T00:{i // 400:02d}Z",
        }
        for i in range(SUBJECTS * PER_SUBJECT)
    ]
    half = len(events) // 2
    resent = rng.sample(events[:half], RESENT)
    send(client, events[:half] + resent[: RESENT // 2])
    first.kill()  # halfway, mid-batch or not: whatever it had not committed is done again, once
    send(client, events[half:] + resent[RESENT // 2 :])

    # The survivor takes the dead worker's partitions once their leases expire.
    wait_until(lambda: set(owners(data_dir).values()) == {second.owner}, LEASE_SECONDS * 5, "the survivor has all")
    settled = client.post(
        "/v1/events?wait=processed", json={"events": [{"type": "settle", "subject": f"s{i}"} for i in range(SUBJECTS)]}
    )
    assert settled.status_code == 200, settled.text
    assert all(r["status"] == "accepted" for r in settled.json()["results"])

    # Every buy fired its trigger once: 20,000 actions of 20,000 distinct events.
    buys = every_page(client, "/v1/actions", trigger=ids["every_buy"])
    assert len(buys) == len({a["event_id"] for a in buys}) == len({a["id"] for a in buys}) == SUBJECTS * PER_SUBJECT
    # Each participant completed "ten" ten times and "25" once: one award event, one action each.
    completions = every_page(client, "/v1/events", type="challenge.completed")
    assert len(completions) == SUBJECTS * (PER_SUBJECT // 10 + 1)
    assert len({(e["subject"], e["data"]["challenge_id"], e["data"]["occurrence"]) for e in completions}) == len(
        completions
    )
    reacted = every_page(client, "/v1/actions", trigger=ids["every_completion"])
    assert sorted(a["event_id"] for a in reacted) == sorted(e["id"] for e in completions)
    assert len(every_page(client, "/v1/events", type="points.awarded")) == SUBJECTS * PER_SUBJECT // 10
    assert len(every_page(client, "/v1/events", type="badge.awarded")) == SUBJECTS
    for i in range(SUBJECTS):
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
    report = status(data_dir)
    assert (
        report["head"] == SUBJECTS * PER_SUBJECT + len(completions) + SUBJECTS * PER_SUBJECT // 10 + SUBJECTS + SUBJECTS
    )
    assert all(c["lag"] == 0 for c in report["consumers"] if c["name"] != "catalog"), report
    second.stop()
    client.close()


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
