"""A data dir made by Headwater 0.1 (everything in one file, no partitions) opens, and goes on.

The fixture is such a data dir as SQL, made by that version. On start the events get their
partition, the derived state moves to `derived.db` with each consumer's checkpoint in every
partition, the old tables leave the main file, and processing carries on from where it was:
nothing fires twice, and new events count on top of the old state. A derived layout older
still (progress rows without their log offset) is dropped and rebuilt from the log.

SQLite's alone: those data dirs are SQLite files (PostgreSQL's store began at this layout, and
its schema versions are `headwater migrate`'s, tested with it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from headwater.app import create_app
from headwater.config import Settings
from headwater.partitions import partition_of
from headwater.storage.sqlite import MAIN_FILE, partition_file
from tests.conftest import WorkerThread

FIXTURE = Path(__file__).parent / "fixtures" / "headwater-0.1.sql"
KEY = FIXTURE.read_text().splitlines()[3].split()[-1]
AUTH = {"Authorization": f"Bearer {KEY}"}
CHALLENGE = "chl_01a232cd6b1570008348dca2533dcf3e"
TRIGGER = "trg_01a232cd6b1670008f98a88beee0d69d"
OLDER_PROGRESS = (
    "DROP TABLE challenge_progress;"
    "CREATE TABLE challenge_progress (challenge_id TEXT, participant_id TEXT, bucket INTEGER, value REAL,"
    " reached_at INTEGER, PRIMARY KEY (challenge_id, participant_id, bucket)) WITHOUT ROWID;"
    "CREATE TABLE facts (fact_id TEXT PRIMARY KEY, data TEXT) WITHOUT ROWID;"
)


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


@pytest.fixture
def old_data_dir(sqlite_settings: Settings) -> Path:
    sqlite_settings.data_dir.mkdir(parents=True)
    conn = sqlite3.connect(sqlite_settings.data_dir / MAIN_FILE)
    conn.executescript(FIXTURE.read_text())
    conn.close()
    return sqlite_settings.data_dir


@pytest.fixture
def client(sqlite_settings: Settings, old_data_dir: Path) -> Iterator[TestClient]:
    quiet = replace(sqlite_settings, webhook_worker=False)  # the fixture's endpoint is not reachable from here
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as test_client:
        yield test_client


def person(client: TestClient, participant: str) -> tuple[Any, ...]:
    body = client.get(f"/v1/participants/{participant}", headers=AUTH).json()
    return body["points"], [b["badge"] for b in body["badges"]], [c["progress"] for c in body["challenges"]]


def listed(client: TestClient, path: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(path, params={**params, "limit": 1000}, headers=AUTH)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_an_old_data_dir_opens_moved_and_goes_on(client: TestClient, old_data_dir: Path) -> None:
    # The state the old version made, served as it was.
    assert person(client, "u0") == person(client, "u1") == (5, ["gold"], [4])
    assert len(listed(client, "/v1/actions", trigger=TRIGGER)) == 8
    assert len(listed(client, "/v1/deliveries")) == 8
    assert [s["type"] for s in listed(client, "/v1/schemas")] == ["buy"]
    # Moved: the main file holds the log and the registry; derived.db the rest.
    main = tables(old_data_dir / MAIN_FILE)
    assert {"actions", "challenge_progress", "webhook_deliveries", "checkpoints", "trigger_changes"} & main == set()
    assert {"events", "triggers", "webhook_endpoints", "challenges", "schemas", "meta"} <= main
    conn = sqlite3.connect(old_data_dir / MAIN_FILE)
    rows = conn.execute("SELECT tenant, mode, subject, partition FROM events").fetchall()
    conn.close()
    assert all(p == partition_of(t, m, s, 8) for t, m, s, p in rows)
    checkpoints: dict[tuple[str, int], int] = {}
    rows_moved: dict[str, int] = {}
    for p in range(8):
        conn = sqlite3.connect(partition_file(old_data_dir, p))
        checkpoints.update(((c, part), seq) for c, part, seq in conn.execute("SELECT * FROM checkpoints"))
        for table in ("actions", "webhook_deliveries", "badge_awards", "challenge_progress", "fact_effects"):
            rows_moved[table] = rows_moved.get(table, 0) + conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        conn.close()
    # The old single checkpoint of each consumer, in every partition (or further: the worker goes on).
    assert sorted(checkpoints) == sorted((c, p) for c in ("facts", "triggers") for p in range(8))
    assert all(seq >= {"facts": 8, "triggers": 14}[c] for (c, _), seq in checkpoints.items())
    # Every row in the file of its partition, once.
    assert rows_moved == {
        "actions": 8, "webhook_deliveries": 8, "badge_awards": 2, "challenge_progress": 2, "fact_effects": 8,
    }  # fmt: skip

    # Processing goes on from there: two more buys of u0 complete the challenge a second time.
    more = [{"type": "buy", "subject": "u0", "idempotency_key": f"new{i}", "data": {"sku": "x"}} for i in range(2)]
    sent = client.post("/v1/events?wait=processed", json={"events": more}, headers=AUTH)
    assert sent.status_code == 200, sent.text
    assert [len(r["actions"]) for r in sent.json()["results"]] == [1, 1]
    assert person(client, "u0") == (10, ["gold"], [6])
    assert person(client, "u1") == (5, ["gold"], [4])
    actions = listed(client, "/v1/actions", trigger=TRIGGER)
    assert len(actions) == len({a["event_id"] for a in actions}) == 10
    assert len(listed(client, "/v1/deliveries")) == 10
    assert len(listed(client, "/v1/events", type="points.awarded")) == 3


def test_an_older_progress_layout_is_rebuilt_from_the_log(sqlite_settings: Settings, old_data_dir: Path) -> None:
    conn = sqlite3.connect(old_data_dir / MAIN_FILE)
    conn.executescript(OLDER_PROGRESS)
    conn.close()
    quiet = replace(sqlite_settings, webhook_worker=False)
    with WorkerThread(quiet), TestClient(create_app(quiet), raise_server_exceptions=False) as client:
        settled = client.post("/v1/events?wait=processed", json={"type": "settle", "subject": "u0"}, headers=AUTH)
        assert settled.status_code == 200, settled.text
        # Rebuilt from the log: the same progress, and the awards it makes again are the ones
        # already in the log (their idempotency keys), so nothing is awarded twice.
        assert person(client, "u0") == person(client, "u1") == (5, ["gold"], [4])
        assert len(listed(client, "/v1/events", type="points.awarded")) == 2
        assert len(listed(client, "/v1/events", type="challenge.completed")) == 2
    assert "facts" not in tables(old_data_dir / MAIN_FILE)
    conn = sqlite3.connect(partition_file(old_data_dir, 0))
    columns = [row[1] for row in conn.execute("PRAGMA table_info(challenge_progress)")]
    conn.close()
    assert columns == ["challenge", "participant_id", "bucket", "value", "reached_at", "seq"]
