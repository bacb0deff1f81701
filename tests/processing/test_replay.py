"""`headwater replay`: every derived table rebuilt from the log, identically twice, including
while a server keeps ingesting; a changed definition applied to history; the outbox kept."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.partitions import DEFAULT_PARTITIONS
from headwater.processing.awards import MAX_AWARD_DEPTH
from headwater.storage.sqlite import partition_file
from headwater.storage.sqlite.derived_schema import REBUILT_TABLES
from headwater.storage.sqlite.rebuild import LOCK_FILE
from tests.conftest import Api, ServerProcess, WorkerThread, run_cli

Snapshot = dict[str, list[tuple[Any, ...]]]
# What the facts engine derives: rebuilt exactly as it was made live (it reads no clock).
DERIVED_TABLES = tuple(t for t in REBUILT_TABLES if t not in ("trigger_windows", "actions", "enrollments", "profiles"))


@pytest.fixture
def api(settings: Any) -> Iterator[Api]:
    quiet = replace(settings, webhook_worker=False)
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield Api(client, quiet)


def snapshot(api_or_dir: Any, tables: tuple[str, ...] = REBUILT_TABLES) -> Snapshot:
    """Every row of the tables, of every partition's file (each row with its partition)."""
    data_dir = api_or_dir.settings.data_dir if isinstance(api_or_dir, Api) else api_or_dir
    found: Snapshot = {t: [] for t in tables}
    for p in range(DEFAULT_PARTITIONS):
        conn = sqlite3.connect(partition_file(data_dir, p))
        try:
            for t in tables:
                found[t] += [(p, *row) for row in conn.execute(f"SELECT * FROM {t}")]
        finally:
            conn.close()
    return {t: sorted(rows, key=repr) for t, rows in found.items()}


def post(api: Api, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=api.as_(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def settle(api: Api, key: str) -> None:
    for _ in range(MAX_AWARD_DEPTH + 1):
        response = api.client.post("/v1/events?wait=processed", json={"type": "settle"}, headers=api.as_(key))
        assert response.status_code == 200


def replay(data_dir: Any) -> str:
    result = run_cli("replay", "--data-dir", str(data_dir), "--batch-size", "7")
    assert "replaying" in result.stderr  # the progress bar
    return result.stdout


def define(api: Api, key: str) -> None:
    """Challenges of every metric and period, rewards, and triggers of every kind with state."""
    api.client.put("/v1/settings", json={"timezone": "Europe/Berlin", "levels": [0, 20]}, headers=api.as_(key))
    post(api, key, "/v1/badges", {"key": "gold", "name": "Gold"})  # rewarded by a challenge
    post(api, key, "/v1/badges", {"key": "silver", "name": "Silver"})  # by a trigger
    purchase = {"fact_type": "custom.purchase", "reward": {"points": 5}}
    for definition in (
        {"metric": {"count": True}, "target": 3, "reward": {"badge": "gold", "points": 10}},
        {"metric": {"sum": "data.amount"}, "target": 100, "period": "daily", "repeatable": True},
        {"metric": {"distinct": "data.sku"}, "target": 2, "period": "weekly"},
        {"metric": {"distinct": "data.sku"}, "target": 3, "period": "rolling:3d", "repeatable": True},
        {"metric": {"count": True}, "target": 2, "period": "rolling:2d"},
        {"metric": {"streak": "daily"}, "target": 2, "repeatable": True},
        {"metric": {"count": True}, "target": 2, "period": "monthly", "fact_type": "custom.badge_check"},
        {"metric": {"count": True}, "target": 1, "fact_type": "badge.awarded", "reward": {"points": 1}},
    ):
        post(api, key, "/v1/challenges", {"name": "c", **purchase, **definition})
    actions: list[dict[str, Any]] = [
        {"type": "award_points", "config": {"points": 2}},
        {"type": "award_badge", "config": {"badge": "silver"}},
        {"type": "journey_enroll", "config": {"journeyId": "vip", "mode": "restart"}},
        {"type": "update_attribute", "config": {"attribute": "last_sku", "value_from": "data.sku"}},
    ]
    for n, action in enumerate(actions):
        rule: dict[str, Any] = {"name": f"t{n}", "event_types": ["purchase"], "action": action}
        if n == 0:
            rule["window"] = {"within": "2d", "count_at_least": 2}
        post(api, key, "/v1/triggers", rule)
    post(api, key, "/v1/webhooks", {"url": "https://hooks.example.com/in", "subscriptions": ["event.*", "action.*"]})


def ingest(api: Api, key: str) -> None:
    events = [
        {
            "type": "purchase",
            "subject": f"u{i % 4}",
            "time": f"2026-04-{1 + (i * 7) % 12:02d}T{(i * 5) % 24:02d}:30:00Z",  # out of order on purpose
            "data": {"amount": 10 + (i * 13) % 90, "sku": f"s{i % 5}"},
            "idempotency_key": f"k{i}",
        }
        for i in range(40)
    ]
    events += [{"type": "badge_check", "subject": "u1"}, {"type": "purchase"}]  # one without a participant
    for start in range(0, len(events), 10):
        response = api.client.post("/v1/events", json={"events": events[start : start + 10]}, headers=api.as_(key))
        assert response.status_code == 200
    settle(api, key)


def test_replay_twice_gives_identical_tables_and_the_live_gamification_state(api: Api) -> None:
    key = api.key()
    define(api, key)
    ingest(api, key)
    live = snapshot(api)
    outbox = snapshot(api, ("webhook_deliveries",))
    participant = api.client.get("/v1/participants/u1", headers=api.as_(key)).json()
    assert live["challenge_completions"] and live["badge_awards"] and live["points_ledger"]
    assert live["trigger_windows"] and live["enrollments"] and live["profiles"] and live["actions"]

    first_output = replay(api.settings.data_dir)
    first = snapshot(api)
    second_output = replay(api.settings.data_dir)
    second = snapshot(api)
    for table in REBUILT_TABLES:
        assert first[table] == second[table], table
        assert len(first[table]) == len(live[table]), table
    # The facts consumer reads no clock: the rebuilt facts and gamification tables are the live ones.
    for table in DERIVED_TABLES:
        assert first[table] == live[table], table
    # Trigger actions are stamped with the consumer's clock live, with the receive time on replay.
    assert {r[1] for r in first["actions"]} == {r[1] for r in live["actions"]}
    assert " 0 new award events" in first_output and " 0 new award events" in second_output
    assert snapshot(api, ("webhook_deliveries",)) == outbox  # nothing re-sent, nothing lost
    settle(api, key)
    assert api.client.get("/v1/participants/u1", headers=api.as_(key)).json() == participant


def test_replay_applies_a_changed_definition_to_history(api: Api) -> None:
    key = api.key()
    created = post(
        api,
        key,
        "/v1/challenges",
        {
            "name": "two",
            "fact_type": "custom.purchase",
            "metric": {"count": True},
            "target": 3,
            "reward": {"points": 7},
        },
    )
    for day in (1, 2):
        response = api.client.post(
            "/v1/events?wait=processed",
            json={"type": "purchase", "subject": "u1", "time": f"2026-04-0{day}T10:00:00Z"},
            headers=api.as_(key),
        )
        assert response.status_code == 200
    assert api.client.get("/v1/participants/u1", headers=api.as_(key)).json()["points"] == 0
    api.client.patch(f"/v1/challenges/{created['id']}", json={"target": 2}, headers=api.as_(key))

    output = replay(api.settings.data_dir)
    assert " 2 new award events" in output  # challenge.completed and points.awarded
    settle(api, key)
    body = api.client.get("/v1/participants/u1", headers=api.as_(key)).json()
    assert (body["points"], body["challenges"][0]["completed_at"]) == (7, "2026-04-02T10:00:00Z")
    completed = api.client.get("/v1/events", params={"type": "challenge.completed"}, headers=api.as_(key)).json()
    assert [e["time"] for e in completed["data"]] == ["2026-04-02T10:00:00Z"]
    # Replaying again finds those awards in the log and adds nothing.
    assert " 0 new award events" in replay(api.settings.data_dir)


def test_a_second_replay_on_the_same_data_dir_is_refused(api: Api) -> None:
    key = api.key()
    define(api, key)
    data_dir = api.settings.data_dir
    with (data_dir / LOCK_FILE).open("a") as held:  # as a running replay holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = run_cli("replay", "--data-dir", str(data_dir), check=False)
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.endswith(f"\nError: another replay is running on {data_dir}\n")
        fcntl.flock(held, fcntl.LOCK_UN)
    assert "replayed" in replay(data_dir)


def test_replay_while_a_server_ingests(server_factory: type[ServerProcess], tmp_path: Any) -> None:
    data_dir = tmp_path / "data"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "admin", "--data-dir", str(data_dir)).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    server = server_factory(data_dir)
    server.start()
    chl = {
        "name": "count",
        "fact_type": "custom.tick",
        "metric": {"count": True},
        "target": 50,
        "reward": {"points": 1},
    }
    challenge_id = httpx.post(server.url + "/v1/challenges", json=chl, headers=headers).json()["id"]
    points = {"name": "p", "event_types": ["tick"], "action": {"type": "award_points", "config": {"points": 1}}}
    assert httpx.post(server.url + "/v1/triggers", json=points, headers=headers).status_code == 201

    def batch(n: int) -> None:
        events = [{"type": "tick", "subject": f"p{i % 3}", "idempotency_key": f"{n}-{i}"} for i in range(60)]
        assert httpx.post(server.url + "/v1/events", json={"events": events}, headers=headers).status_code == 200

    for n in range(10):
        batch(n)
    stop = threading.Event()

    def keep_ingesting() -> None:
        n = 10
        while not stop.is_set() and n < 60:
            batch(n)
            n += 1

    ingester = threading.Thread(target=keep_ingesting)
    ingester.start()
    try:
        replay(data_dir)
    finally:
        stop.set()
        ingester.join()
    for _ in range(MAX_AWARD_DEPTH + 1):
        assert (
            httpx.post(server.url + "/v1/events?wait=processed", json={"type": "x"}, headers=headers).status_code == 200
        )
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"type": "tick", "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(server.url + "/v1/events", params=params, headers=headers).json()
        events += page["data"]
        if (cursor := page["next_cursor"]) is None:
            break
    per_participant = {p: sum(1 for e in events if e["subject"] == p) for p in ("p0", "p1", "p2")}
    for participant, count in per_participant.items():
        body = httpx.get(f"{server.url}/v1/participants/{participant}", headers=headers).json()
        # One point per tick from the trigger, one for completing the challenge at 50.
        assert body["points"] == count + (1 if count >= 50 else 0), participant
        assert body["challenges"] == [
            {
                "challenge_id": challenge_id,
                "progress": count,
                "target": 50,
                "completed_at": body["challenges"][0]["completed_at"],
                "streak": None,
            }
        ]
    state = snapshot(data_dir)
    ledger = state["points_ledger"]
    assert len(ledger) == len({row[1] for row in ledger})  # (partition, id, ...): no entry twice
    server.stop()
    # The state built partly live, partly by the replay, partly live again after the swap is the
    # state a replay builds from the whole log (trigger actions aside: stamped by the clock live).
    replay(data_dir)
    rebuilt = snapshot(data_dir)
    for table in DERIVED_TABLES:
        assert rebuilt[table] == state[table], table
    replay(data_dir)
    assert snapshot(data_dir) == rebuilt
