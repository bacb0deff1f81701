"""`headwater replay`: every derived table rebuilt from the log, identically twice, including
while a server keeps ingesting; a changed definition applied to history; the outbox kept."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.partitions import DEFAULT_PARTITIONS
from headwater.storage.postgres import schema_derived
from headwater.storage.postgres.rebuild import REBUILD_LOCK
from headwater.storage.sqlite import derived_schema, partition_file
from headwater.storage.sqlite.rebuild import LOCK_FILE
from tests.conftest import Api, ServerProcess, WorkerThread, run_cli, server_args, store_args
from tests.processing import settle, settle_with

Row = dict[str, Any]
Snapshot = dict[str, list[Row]]
# What the triggers engine derives reads the clock; the rest (the facts engine's) is rebuilt
# exactly as it was made live.
CLOCKED = ("trigger_windows", "actions", "enrollments", "profiles")


@pytest.fixture
def api(settings: Any) -> Iterator[Api]:
    quiet = replace(settings, webhook_worker=False)
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        yield Api(client, quiet)


def rebuilt_tables(settings: Settings) -> tuple[str, ...]:
    return derived_schema.REBUILT_TABLES if settings.store is None else schema_derived.REBUILT_TABLES


def snapshot(settings: Settings, tables: tuple[str, ...] | None = None) -> Snapshot:
    """Every row of the tables (the rebuilt ones unless named), each sorted: on SQLite of every
    partition's file, each row with its partition; on PostgreSQL of the one database."""
    tables = rebuilt_tables(settings) if tables is None else tables
    found: Snapshot = {t: [] for t in tables}
    if settings.store is None:
        for p in range(settings.partitions or DEFAULT_PARTITIONS):
            conn = sqlite3.connect(partition_file(settings.data_dir, p))
            conn.row_factory = sqlite3.Row
            try:
                for t in tables:
                    found[t] += [{"partition": p, **dict(row)} for row in conn.execute(f"SELECT * FROM {t}")]
            finally:
                conn.close()
    else:
        found = asyncio.run(_postgres_rows(settings.store, tables))
    return {t: sorted(rows, key=repr) for t, rows in found.items()}


async def _postgres_rows(url: str, tables: tuple[str, ...]) -> Snapshot:
    conn = await asyncpg.connect(url)
    try:
        return {t: [dict(row) for row in await conn.fetch(f"SELECT * FROM {t}")] for t in tables}
    finally:
        await conn.close()


@contextlib.contextmanager
def replay_running(settings: Settings) -> Iterator[str]:
    """The lock a running replay holds, held here, as such a replay would hold it; yields
    where the refusal says the other replay runs. SQLite's is a lock file in the data dir,
    PostgreSQL's an advisory lock of a session, released when it ends."""
    if settings.store is None:
        with (settings.data_dir / LOCK_FILE).open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield str(settings.data_dir)
            fcntl.flock(held, fcntl.LOCK_UN)
        return
    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(settings.store))
        try:
            assert loop.run_until_complete(conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK))
            yield "this database"
        finally:
            loop.run_until_complete(conn.close())
    finally:
        loop.close()


def post(api: Api, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.client.post(path, json=body, headers=api.as_(key))
    assert response.status_code == 201, response.text
    return dict(response.json())


def replay(settings: Settings, batch_size: int = 7) -> str:
    result = run_cli("replay", *store_args(settings), "--batch-size", str(batch_size))
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
    live = snapshot(api.settings)
    outbox = snapshot(api.settings, ("webhook_deliveries",))
    participant = api.client.get("/v1/participants/u1", headers=api.as_(key)).json()
    assert live["challenge_completions"] and live["badge_awards"] and live["points_ledger"]
    assert live["trigger_windows"] and live["enrollments"] and live["profiles"] and live["actions"]

    first_output = replay(api.settings)
    first = snapshot(api.settings)
    second_output = replay(api.settings)
    second = snapshot(api.settings)
    for table in rebuilt_tables(api.settings):
        assert first[table] == second[table], table
        assert len(first[table]) == len(live[table]), table
    # The facts consumer reads no clock: the rebuilt facts and gamification tables are the live ones.
    for table in set(rebuilt_tables(api.settings)) - set(CLOCKED):
        assert first[table] == live[table], table
    # Trigger actions are stamped with the consumer's clock live, with the receive time on replay.
    assert {r["id"] for r in first["actions"]} == {r["id"] for r in live["actions"]}
    assert " 0 new award events" in first_output and " 0 new award events" in second_output
    assert snapshot(api.settings, ("webhook_deliveries",)) == outbox  # nothing re-sent, nothing lost
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

    output = replay(api.settings)
    assert " 2 new award events" in output  # challenge.completed and points.awarded
    settle(api, key)
    body = api.client.get("/v1/participants/u1", headers=api.as_(key)).json()
    assert (body["points"], body["challenges"][0]["completed_at"]) == (7, "2026-04-02T10:00:00Z")
    completed = api.client.get("/v1/events", params={"type": "challenge.completed"}, headers=api.as_(key)).json()
    assert [e["time"] for e in completed["data"]] == ["2026-04-02T10:00:00Z"]
    # Replaying again finds those awards in the log and adds nothing.
    assert " 0 new award events" in replay(api.settings)


def test_a_second_replay_on_the_same_store_is_refused(api: Api) -> None:
    key = api.key()
    define(api, key)
    with replay_running(api.settings) as where:
        refused = run_cli("replay", *store_args(api.settings), check=False)
        assert (refused.returncode, refused.stdout) == (1, ""), refused.stderr
        assert refused.stderr.endswith(f"\nError: another replay is running on {where}\n"), refused.stderr
    assert "replayed" in replay(api.settings)


def test_replay_while_a_server_ingests(server_factory: type[ServerProcess], settings: Settings) -> None:
    cli = ("keys", "create", "--tenant", "t", "--role", "admin", *store_args(settings))
    key = run_cli(*cli).stdout.split()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    server = server_factory(settings.data_dir, args=tuple(server_args(settings)))
    server.start()
    # Longer than the server's 60 s sync timeout: a slow answer under the suite's load is a 503
    # that says so, not a client's read timeout.
    patient = httpx.Client(timeout=90)
    chl = {
        "name": "count",
        "fact_type": "custom.tick",
        "metric": {"count": True},
        "target": 50,
        "reward": {"points": 1},
    }
    challenge_id = patient.post(server.url + "/v1/challenges", json=chl, headers=headers).json()["id"]
    points = {"name": "p", "event_types": ["tick"], "action": {"type": "award_points", "config": {"points": 1}}}
    assert patient.post(server.url + "/v1/triggers", json=points, headers=headers).status_code == 201

    def batch(n: int) -> None:
        events = [{"type": "tick", "subject": f"p{i % 3}", "idempotency_key": f"{n}-{i}"} for i in range(60)]
        assert patient.post(server.url + "/v1/events", json={"events": events}, headers=headers).status_code == 200

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
        # Batches of 60, as the ingest's: still a hundred and more replay steps among the live
        # writes, and a quarter of the time of batches of 7 (21 s a replay on PostgreSQL, which
        # a loaded CI machine stretched past the CLI's two minutes).
        replay(settings, 60)
    finally:
        stop.set()
        ingester.join()
    settle_with(
        lambda body: patient.post(server.url + "/v1/events?wait=processed", json=body, headers=headers), "t", settings
    )
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"type": "tick", "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = patient.get(server.url + "/v1/events", params=params, headers=headers).json()
        events += page["data"]
        if (cursor := page["next_cursor"]) is None:
            break
    per_participant = {p: sum(1 for e in events if e["subject"] == p) for p in ("p0", "p1", "p2")}
    for participant, count in per_participant.items():
        body = patient.get(f"{server.url}/v1/participants/{participant}", headers=headers).json()
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
    state = snapshot(settings)
    ledger = state["points_ledger"]
    assert len(ledger) == len({row["id"] for row in ledger})  # no entry twice
    patient.close()
    server.stop()
    # The state built partly live, partly by the replay, partly live again after the swap is the
    # state a replay builds from the whole log (trigger actions aside: stamped by the clock live).
    replay(settings, 60)
    rebuilt = snapshot(settings)
    for table in set(rebuilt_tables(settings)) - set(CLOCKED):
        assert rebuilt[table] == state[table], table
    replay(settings, 60)
    assert snapshot(settings) == rebuilt
