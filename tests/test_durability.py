"""Crash durability: an event acknowledged with 200 survives a SIGKILL of the server, exactly once."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ServerProcess, run_cli

THREADS = 6
BATCH = 50
LOAD_SECONDS = 1.5  # at least; longer until LOAD_ACKED events are acknowledged (a loaded machine)
LOAD_ACKED = 200


def create_key(data_dir: Path, role: str, tenant: str = "t") -> str:
    out = run_cli("keys", "create", "--tenant", tenant, "--role", role, "--data-dir", str(data_dir))
    return out.stdout.strip().splitlines()[-1]


def read_all(url: str, key: str) -> list[dict[str, Any]]:
    """Every event of the key's tenant and mode, through cursor paging."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while True:
            response = client.get("/v1/events", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            events += body["data"]
            if body["next_cursor"] is None:
                return events
            params["cursor"] = body["next_cursor"]


def close_output(server: ServerProcess) -> None:
    if server.proc is not None and server.proc.stdout is not None:
        server.proc.stdout.close()


class Load:
    """Client threads that ingest until told to stop, recording what was sent and what was acked."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.lock = threading.Lock()
        self.sent: dict[str, dict[str, Any]] = {}  # idempotency key -> event body
        self.acked: dict[str, str] = {}  # idempotency key -> event id
        self.unexpected: list[str] = []
        self.in_flight = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(THREADS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()

    def run(self, worker: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                size = 1 if n % 3 == 0 else BATCH
                events = [
                    {
                        "type": "durable",
                        "subject": f"w{worker}",
                        "idempotency_key": f"w{worker}-r{n}-{i}",
                        "data": {"worker": worker, "request": n, "i": i},
                    }
                    for i in range(size)
                ]
                n += 1
                body: Any = events[0] if size == 1 else {"events": events}
                with self.lock:
                    self.sent.update((e["idempotency_key"], e) for e in events)
                    self.in_flight += 1
                try:
                    response = client.post("/v1/events", json=body)
                except httpx.TransportError:
                    return  # the server is gone
                finally:
                    with self.lock:
                        self.in_flight -= 1
                if response.status_code != 200:
                    with self.lock:
                        self.unexpected.append(f"{response.status_code}: {response.text}")
                    continue
                results = response.json()["results"]
                with self.lock:
                    for event, result in zip(events, results, strict=True):
                        if result["status"] == "accepted":
                            self.acked[event["idempotency_key"]] = result["id"]
                        else:
                            self.unexpected.append(repr(result))


def test_acknowledged_events_survive_sigkill_exactly_once(server_factory: type[ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ingest_key = create_key(data_dir, "ingest")
    viewer_key = create_key(data_dir, "viewer")
    db = data_dir / "headwater.db"

    server = server_factory(data_dir)
    server.start()
    try:
        # WAL mode, and the log file is there while the server runs.
        assert Path(f"{db}-wal").exists()
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

        load = Load(server.url, ingest_key)
        load.start()
        time.sleep(LOAD_SECONDS)
        deadline = time.monotonic() + 60
        while len(load.acked) < LOAD_ACKED and time.monotonic() < deadline:
            time.sleep(0.01)
        # Kill while requests are being served, not between them.
        deadline = time.monotonic() + 5
        while load.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        in_flight_at_kill = load.in_flight
        server.kill()
        load.join()
    finally:
        close_output(server)

    assert in_flight_at_kill >= 1
    assert load.unexpected == []
    acked, sent = load.acked, load.sent
    assert len(acked) >= 100, "the load barely ran"
    assert len(sent) > len(acked)

    # The database file alone (no server) already holds every acknowledged event.
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        on_disk = dict(conn.execute("SELECT idempotency_key, id FROM events"))
    assert {k: on_disk.get(k) for k in acked} == acked

    restarted = server_factory(data_dir)
    restarted.start()
    try:
        stored = read_all(restarted.url, viewer_key)
        ids = Counter(e["id"] for e in stored)
        keys = Counter(e["idempotency_key"] for e in stored)
        assert [i for i, n in ids.items() if n > 1] == []
        assert [k for k, n in keys.items() if n > 1] == []
        by_key = {e["idempotency_key"]: e for e in stored}
        missing = [k for k in acked if k not in by_key]
        assert missing == []
        assert {k: by_key[k]["id"] for k in acked} == acked
        assert set(by_key) <= set(sent)
        assert len(acked) <= len(stored) <= len(sent)
        for e in stored:
            original = sent[e["idempotency_key"]]
            assert (e["type"], e["subject"], e["data"]) == (original["type"], original["subject"], original["data"])

        # Retrying every acknowledged event reports it as a duplicate of the original.
        resent = list(acked)
        with httpx.Client(
            base_url=restarted.url, headers={"Authorization": f"Bearer {ingest_key}"}, timeout=30
        ) as client:
            for start in range(0, len(resent), 1000):
                chunk = resent[start : start + 1000]
                response = client.post("/v1/events", json={"events": [sent[k] for k in chunk]})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["accepted"] == 0 and body["duplicates"] == len(chunk)
                assert [(r["status"], r["id"]) for r in body["results"]] == [("duplicate", acked[k]) for k in chunk]
        assert len(read_all(restarted.url, viewer_key)) == len(stored)
        restarted.stop()
    finally:
        close_output(restarted)

    # After a clean stop the file is still a WAL database holding exactly those rows.
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(stored)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
