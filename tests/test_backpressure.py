"""Backpressure: a full write queue refuses with 503 + Retry-After and stores nothing it refused.

The writer is stalled deterministically: another connection holds the SQLite write lock
(BEGIN EXCLUSIVE), so the writer waits in BEGIN IMMEDIATE on busy_timeout while requests pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec

from headwater.events import Event
from headwater.storage.base import Backpressure
from headwater.storage.sqlite import MAIN_FILE, open_sqlite_store
from tests.conftest import ServerProcess, run_cli

QUEUE_MAX = 100
BATCH = 30
REQUESTS = 16


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock from another connection until the block ends."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def stored_keys(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT idempotency_key, id FROM events"))


def test_full_queue_answers_503_and_stores_only_acknowledged(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "headwater.db"
    key = run_cli("keys", "create", "--tenant", "t", "--role", "ingest", "--data-dir", str(data_dir))
    headers = {"Authorization": f"Bearer {key.stdout.strip().splitlines()[-1]}"}
    # No background catalog write may become the stalled group instead of the first request.
    env = {"HEADWATER_QUEUE_MAX_EVENTS": str(QUEUE_MAX), "HEADWATER_CATALOG_INTERVAL": "3600"}
    server = server_factory(data_dir, env=env)
    server.start()
    responses: dict[int, httpx.Response] = {}
    lock = threading.Lock()

    def send(client: httpx.Client, n: int) -> None:
        events = [{"type": "flood", "idempotency_key": f"r{n}-{i}"} for i in range(BATCH)]
        response = client.post("/v1/events", json={"events": events})
        with lock:
            responses[n] = response

    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=90) as client:
            # Warm the key cache while the store is free, and let the trigger consumer apply the
            # event: once idle, it writes nothing that could become the stalled group.
            assert client.post("/v1/events?wait=processed", json={"type": "warm"}).status_code == 200
            with ThreadPoolExecutor(REQUESTS) as pool:
                with write_lock(db):
                    # The first request becomes the group the writer is stuck on; the rest queue behind it.
                    futures = [pool.submit(send, client, 0)]
                    time.sleep(0.3)
                    futures += [pool.submit(send, client, n) for n in range(1, REQUESTS)]
                    # The queue holds ~QUEUE_MAX events behind the stalled group; the rest are refused.
                    deadline = time.monotonic() + 5
                    while sum(r.status_code == 503 for r in list(responses.values())) < 5:
                        assert time.monotonic() < deadline, {n: r.status_code for n, r in responses.items()}
                        time.sleep(0.02)
                    time.sleep(0.3)
                    with lock:
                        assert all(r.status_code == 503 for r in responses.values())
                # The lock is released: the stalled requests commit now.
                for future in futures:
                    future.result()
    finally:
        server.stop()
        assert server.proc is not None and server.proc.stdout is not None
        server.proc.stdout.close()

    refused = {n: r for n, r in responses.items() if r.status_code == 503}
    acked = {n: r for n, r in responses.items() if r.status_code == 200}
    assert len(refused) + len(acked) == REQUESTS
    # The stalled group plus a queue's worth got through, no more.
    assert 0 in acked
    assert len(acked) == 1 + QUEUE_MAX // BATCH
    for response in refused.values():
        assert response.headers["Retry-After"] == "1"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "server is busy: retry later", "details": []}

    on_disk = stored_keys(db)
    for n, response in acked.items():
        body = response.json()
        assert (body["accepted"], body["duplicates"], body["rejected"]) == (BATCH, 0, 0)
        assert {f"r{n}-{r['index']}": r["id"] for r in body["results"]} == {
            k: on_disk[k] for k in (f"r{n}-{i}" for i in range(BATCH))
        }
    refused_keys = {f"r{n}-{i}" for n in refused for i in range(BATCH)}
    assert refused_keys.isdisjoint(on_disk)
    assert len(on_disk) == 1 + len(acked) * BATCH


def event(key: str) -> Event:
    now = datetime.now(UTC)
    return Event(
        id=f"evt_{key}",
        type="flood",
        subject=None,
        source=None,
        channel=None,
        time=now,
        received_at=now,
        idempotency_key=key,
        data=msgspec.Raw(b"{}"),
        tenant="t",
        mode="live",
    )


def test_store_refuses_beyond_queue_max_and_admits_an_oversized_job_into_an_empty_queue(
    tmp_path: Path,
) -> None:
    db = tmp_path / MAIN_FILE

    async def main() -> tuple[list[Any], dict[str, str]]:
        store = open_sqlite_store(tmp_path, queue_max_events=10)
        await store.start()
        try:
            await store.log.append([event("warm")])
            outcomes: list[Any] = []
            with write_lock(db):
                # The writer takes the first job and stalls on the lock; the queue is then empty.
                first = asyncio.ensure_future(store.log.append([event(f"a{i}") for i in range(25)]))
                await asyncio.sleep(0.2)
                big = asyncio.ensure_future(store.log.append([event(f"b{i}") for i in range(25)]))  # empty queue
                await asyncio.sleep(0)
                for n in range(3):
                    # Refused at once; a wait here (TimeoutError) would mean it was queued.
                    try:
                        await asyncio.wait_for(store.log.append([event(f"c{n}")]), 2)
                    except Backpressure as exc:
                        outcomes.append(exc.retry_after)
                await asyncio.sleep(0.1)
                assert not first.done() and not big.done()
            assert [o.status for o in await first] == ["accepted"] * 25
            assert [o.status for o in await big] == ["accepted"] * 25
            outcomes.append(await store.log.append([event("after")]))
            return outcomes, stored_keys(db)
        finally:
            await store.close()

    outcomes, on_disk = asyncio.run(main())
    assert outcomes[:3] == [1, 1, 1]
    assert [o.status for o in outcomes[3]] == ["accepted"]
    assert set(on_disk) == {"warm", "after"} | {f"a{i}" for i in range(25)} | {f"b{i}" for i in range(25)}
