"""The Python client (`headwater.Client`, `headwater.AsyncClient`) against a real `headwater serve`.

What must hold: every tracked event arrives exactly once, through a SIGKILL and restart of the
server, a real 429 with `Retry-After`, a 413 split, a full write queue's 503, a full disk's 507; a rejected event is
counted and not resent while the rest of its batch goes in; a full queue blocks (then raises) or
drops its oldest, as chosen, and says how many; bad arguments raise at once; the body is gzip on
the wire; the queue is sent at interpreter exit; a refused key is surfaced, not retried.
Events are counted in the store afterwards with `headwater events export`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import headwater
from headwater import faults
from headwater.client import AsyncClient, Backoff, Client, DeliveryError, QueueFullError, Stats
from tests.conftest import ROOT, ServerProcess, run_cli
from tests.test_backpressure import write_lock

FAST = Backoff(initial=0.05, maximum=0.5)


def new_key(data_dir: Path, role: str = "ingest", tenant: str = "t") -> str:
    out = run_cli("keys", "create", "--tenant", tenant, "--role", role, "--data-dir", str(data_dir))
    return out.stdout.strip().splitlines()[-1]


def stored(data_dir: Path, tmp_path: Path, tenant: str = "t") -> list[dict[str, Any]]:
    """Every event of the tenant in the store, in log order."""
    path = tmp_path / f"export-{time.monotonic_ns()}.ndjson"
    run_cli("events", "export", "--tenant", tenant, "--data-dir", str(data_dir), "-o", str(path))
    return [json.loads(line) for line in path.read_text().splitlines()]


def counts(stats: Stats) -> dict[str, int]:
    """The stats that say what became of the events."""
    names = ("tracked", "queued", "in_flight", "accepted", "duplicates", "rejected", "dropped", "failed", "unsent")
    return {name: getattr(stats, name) for name in names}


def settled(tracked: int, **counted: int) -> dict[str, int]:
    return {"tracked": tracked, "queued": 0, "in_flight": 0, "accepted": 0, "duplicates": 0, "rejected": 0,
            "dropped": 0, "failed": 0, "unsent": 0, **counted}  # fmt: skip


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(server_factory: type[ServerProcess], data_dir: Path) -> ServerProcess:
    """A server that is not started yet: a port nobody listens on until the test starts it."""
    return server_factory(data_dir)


def test_100000_events_arrive_exactly_once_through_a_sigkill_and_restart(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    server.start()
    total = 100_000
    started = time.monotonic()
    restarted = threading.Event()
    with Client(server.url, key, block_timeout=120, backoff=FAST) as client:

        def kill_midway() -> None:
            while client.stats.accepted < total // 3:
                time.sleep(0.01)
            server.kill()  # mid-stream: a batch is in flight or about to be
            time.sleep(0.5)
            server.start(timeout=60)  # the same data dir and port
            restarted.set()

        killer = threading.Thread(target=kill_midway)
        killer.start()
        for i in range(total):
            client.track("load", subject=f"user{i % 100}", data={"i": i})
        killer.join(120)
        assert restarted.is_set()
        client.flush(timeout=180)
        stats = client.stats
    elapsed = time.monotonic() - started
    print(f"\n100,000 events through a SIGKILL and restart: {elapsed:.1f} s, {stats}")

    assert counts(stats) == settled(total, accepted=stats.accepted, duplicates=stats.duplicates)
    assert stats.accepted + stats.duplicates == total
    assert stats.retries > 0  # the server was down for a while
    events = stored(data_dir, tmp_path)
    assert len(events) == total
    assert len({e["idempotency_key"] for e in events}) == total
    assert sorted(e["data"]["i"] for e in events) == list(range(total))
    assert all(e["type"] == "load" and e["subject"] == f"user{e['data']['i'] % 100}" for e in events)


def access_log(lines: list[bytes]) -> list[int]:
    """The statuses of the POST /v1/events requests in a JSON access log, in order."""
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("logger") == "headwater.access" and entry["route"] == "/v1/events":
                found.append(entry["status"])
    return found


def test_a_real_429_is_retried_after_its_retry_after_and_a_413_over_the_burst_is_split(
    server_factory: type[ServerProcess], data_dir: Path, tmp_path: Path
) -> None:
    admin = new_key(data_dir, "admin")
    server = server_factory(data_dir, {"HEADWATER_LOG_LEVEL": "info", "HEADWATER_LOG_FORMAT": "json"})
    server.start()
    output = server.drain()
    created = httpx.post(
        f"{server.url}/v1/keys",
        headers={"Authorization": f"Bearer {admin}"},
        json={"role": "ingest", "rate_limit": {"per_second": 100, "burst": 100}},
    )
    assert created.status_code == 201, created.text
    with Client(server.url, created.json()["key"], flush_interval=3600) as client:
        for i in range(300):
            client.track("limited", data={"i": i})
        client.flush(timeout=60)  # all 300 in one batch: over the burst, so 413, split, then 429s
        stats = client.stats
    assert counts(stats) == settled(300, accepted=300)
    assert stats.retries > 0
    assert stats.last_error is not None and stats.last_error.startswith("429: rate limit of 100 events/s (burst 100)")
    deadline = time.monotonic() + 30  # the lines are read from the server's pipe as they come
    while len(access_log(output)) < stats.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    statuses = access_log(output)
    assert len(statuses) == stats.requests
    # Each 429 was waited out: the one resend after it passed (a client that came back early
    # would have met more 429s, or the refusal before the body is read).
    assert statuses.count(429) == stats.retries
    assert all(statuses[i + 1] == 200 for i, s in enumerate(statuses) if s == 429)
    assert set(statuses) == {200, 413, 429}
    events = stored(data_dir, tmp_path)
    assert sorted(e["data"]["i"] for e in events) == list(range(300))


def test_a_rejected_event_is_counted_and_reported_not_resent_and_the_rest_of_its_batch_goes_in(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    server.start()
    reported: list[tuple[dict[str, Any], list[dict[str, object]]]] = []
    with Client(server.url, key, flush_interval=3600, on_rejected=lambda e, errors: reported.append((e, errors))) as c:
        c.track("ok", data={"n": 1}, idempotency_key="a")
        c.track("ok", data={"n": 2**70}, idempotency_key="b")  # out of 64 bits: the server's rule
        c.track("ok", subject="s", source="pos", channel="web", time="2026-04-12T10:30:00Z", idempotency_key="c")
        c.flush(timeout=60)
        stats = c.stats
    assert counts(stats) == settled(3, accepted=2, rejected=1)
    assert (stats.requests, stats.retries) == (1, 0)
    message = "number out of range: a float must be finite in 64 bits, an integer from -2^63 to 2^64-1"
    assert reported == [
        (
            {"type": "ok", "idempotency_key": "b", "data": {"n": 2**70}},
            [{"field": "data.n", "code": "number_out_of_range", "message": message}],
        )
    ]
    events = stored(data_dir, tmp_path)
    assert [{k: e[k] for k in ("type", "subject", "source", "channel", "time", "idempotency_key", "data")}
            for e in events] == [
        {"type": "ok", "subject": None, "source": None, "channel": None, "time": events[0]["time"],
         "idempotency_key": "a", "data": {"n": 1}},
        {"type": "ok", "subject": "s", "source": "pos", "channel": "web", "time": "2026-04-12T10:30:00Z",
         "idempotency_key": "c", "data": {}},
    ]  # fmt: skip


def test_drop_oldest_keeps_the_newest_events_and_counts_the_dropped(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    # Nothing listens on the port yet; a flush interval longer than the test: the queue alone decides.
    with Client(server.url, key, max_queue=10, when_full="drop_oldest", flush_interval=3600) as client:
        for i in range(100):
            client.track("kept", data={"i": i})
        assert counts(client.stats) == {**settled(100, dropped=90), "queued": 10}
        assert client.stats.requests == 0
        server.start()
        client.flush(timeout=60)
        assert counts(client.stats) == settled(100, accepted=10, dropped=90)
    assert [e["data"]["i"] for e in stored(data_dir, tmp_path)] == list(range(90, 100))


def test_block_waits_for_room_then_raises_after_its_timeout(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    with Client(server.url, key, max_queue=10, block_timeout=0.5, flush_interval=3600, backoff=FAST) as client:
        for i in range(20):
            # The 11th finds the queue full and wakes the flusher, which takes the ten as a batch
            # (and retries it, since nothing listens), so there is room again.
            client.track("blocked", data={"i": i})
        assert counts(client.stats) == {**settled(20), "queued": 10, "in_flight": 10}
        started = time.monotonic()
        with pytest.raises(QueueFullError, match=r"^the queue has held 10 events for 0.5 s$"):
            client.track("blocked", data={"i": 20})
        assert time.monotonic() - started >= 0.5
        assert client.stats.tracked == 20  # the refused event was not queued
        server.start()
        client.flush(timeout=60)
        assert counts(client.stats) == settled(20, accepted=20)
    assert sorted(e["data"]["i"] for e in stored(data_dir, tmp_path)) == list(range(20))


def test_close_gives_up_after_its_timeout_and_counts_the_unsent(server: ServerProcess, data_dir: Path) -> None:
    client = Client(server.url, new_key(data_dir), backoff=FAST)
    for i in range(5):
        client.track("lost", data={"i": i})
    client.close(timeout=0.5)
    assert counts(client.stats) == settled(5, unsent=5)
    assert client.stats.retries > 0 and client.stats.last_error is not None
    assert "headwater-client" not in [t.name for t in threading.enumerate()]
    with pytest.raises(RuntimeError, match="closed"):
        client.track("late")
    client.close()  # again: nothing to do


class Relay:
    """A TCP relay in front of the real server that keeps a copy of the bytes the client sends,
    to read the request as it went over the wire."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.upstream))
                for source, target, copy in ((client, server, True), (server, client, False)):
                    thread = threading.Thread(target=self._pump, args=(source, target, copy))
                    thread.start()
                    self.threads.append(thread)

    def _pump(self, source: socket.socket, target: socket.socket, copy: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if copy:
                    self.sent += chunk
                target.sendall(chunk)
        # Either side closing ends both directions (a shutdown wakes the other pump's recv).
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.listener.close()
        for thread in self.threads:
            thread.join(10)


def test_the_body_goes_gzip_compressed(server: ServerProcess, data_dir: Path, tmp_path: Path) -> None:
    key = new_key(data_dir)
    server.start()
    relay = Relay(server.port)
    try:
        with Client(f"http://127.0.0.1:{relay.port}", key, flush_interval=3600) as client:
            for i in range(200):
                client.track("zipped", subject="cust_123", data={"i": i, "note": "the same words every time"})
            client.flush(timeout=60)
            stats = client.stats
    finally:
        relay.close()
    head, _, body = bytes(relay.sent).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/events HTTP/1.1"
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    assert (headers["content-encoding"], headers["content-type"]) == ("gzip", "application/json")
    assert int(headers["content-length"]) == len(body) == stats.bytes_sent
    sent = json.loads(gzip.decompress(body))
    assert [{k: v for k, v in e.items() if k != "idempotency_key"} for e in sent["events"]] == [
        {"type": "zipped", "subject": "cust_123", "data": {"i": i, "note": "the same words every time"}}
        for i in range(200)
    ]
    assert len(body) * 5 < len(gzip.decompress(body))  # compressed indeed
    assert counts(stats) == settled(200, accepted=200)
    assert len(stored(data_dir, tmp_path)) == 200


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"type": 5}, TypeError, "type must be a str, not int"),
        ({"type": "t", "data": [1, 2]}, TypeError, "data must be a dict (a JSON object) or None, not list"),
        ({"type": "t", "data": {"at": object()}}, TypeError, "data is not JSON-serialisable: Object of type object "),
        ({"type": "t", "data": {"x": float("nan")}}, ValueError, "data cannot be sent as JSON: Out of range float"),
        ({"type": "t", "subject": 7}, TypeError, "subject must be a str or None, not int"),
        ({"type": "t", "time": 1.5}, TypeError, "time must be a datetime, an ISO 8601 str or None, not float"),
        ({"type": "t", "idempotency_key": 3}, TypeError, "idempotency_key must be a str or None, not int"),
        (
            {"type": "t", "data": {"x": "y" * 5 * 1024 * 1024}},
            ValueError,
            "the event is 5242965 bytes as JSON: too big for a request body of at most 5242880 bytes",
        ),
    ],
)
def test_bad_arguments_to_track_raise_at_once(
    server: ServerProcess, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with Client(server.url, "hw_live_unused") as client:
        with pytest.raises(error) as raised:
            client.track(**arguments)
        assert str(raised.value).startswith(message)
        assert client.stats.tracked == 0


def test_a_refused_key_fails_its_batch_without_retrying_and_flush_raises(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    server.start()
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # its checksum fails
    failures: list[tuple[DeliveryError, list[dict[str, Any]]]] = []
    with Client(server.url, wrong, flush_interval=3600, on_error=lambda e, events: failures.append((e, events))) as c:
        c.track("denied", idempotency_key="d1")
        with pytest.raises(DeliveryError) as raised:
            c.flush(timeout=30)
        c.flush(timeout=30)  # raised once
        stats = c.stats
    assert raised.value.status == 401
    assert counts(stats) == settled(1, failed=1)
    assert (stats.requests, stats.retries) == (1, 0)
    assert failures == [(raised.value, [{"type": "denied", "idempotency_key": "d1"}])]
    assert stored(data_dir, tmp_path) == []


def run_script(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_what_is_queued_is_sent_at_interpreter_exit(server: ServerProcess, data_dir: Path, tmp_path: Path) -> None:
    key = new_key(data_dir)
    server.start()
    done = run_script(
        """
        import sys
        import headwater
        client = headwater.Client(sys.argv[1], sys.argv[2], flush_interval=3600)
        for i in range(50):
            client.track("at_exit", data={"i": i})
        print(client.stats.queued)  # then exit without flush or close
        """,
        server.url,
        key,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "50\n", "")
    assert sorted(e["data"]["i"] for e in stored(data_dir, tmp_path)) == list(range(50))


def test_the_exit_flush_is_bounded_when_the_server_is_down(server: ServerProcess, data_dir: Path) -> None:
    done = run_script(
        """
        import atexit, sys, time
        import headwater
        started = time.monotonic()
        # Registered before the client's hook, so it runs after it: it sees what the exit did.
        atexit.register(lambda: print(client.stats.unsent, time.monotonic() - started < 10))
        client = headwater.Client(sys.argv[1], sys.argv[2], exit_timeout=1)
        client.track("never")
        """,
        server.url,
        new_key(data_dir),
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 True\n", "")


def test_the_async_client_delivers_in_the_same_way(server: ServerProcess, data_dir: Path, tmp_path: Path) -> None:
    key = new_key(data_dir)
    server.start()
    rejected: list[dict[str, Any]] = []

    async def main() -> Stats:
        async with AsyncClient(server.url, key, max_queue=500, on_rejected=lambda e, _: rejected.append(e)) as client:
            for i in range(5000):
                await client.track("async", subject=f"s{i % 3}", data={"i": i})
            await client.track("async", data={"i": 2**70}, idempotency_key="too-big")
            await client.flush(timeout=60)
            return client.stats

    stats = asyncio.run(main())
    assert counts(stats) == settled(5001, accepted=5000, rejected=1)
    assert rejected == [{"type": "async", "idempotency_key": "too-big", "data": {"i": 2**70}}]
    events = stored(data_dir, tmp_path)
    assert sorted(e["data"]["i"] for e in events) == list(range(5000))
    assert len({e["idempotency_key"] for e in events}) == 5000


def test_the_async_client_queue_is_sent_at_exit_when_the_loop_ends_without_aclose(
    server: ServerProcess, data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    server.start()
    done = run_script(
        """
        import asyncio, sys
        import headwater

        async def main():
            client = headwater.AsyncClient(sys.argv[1], sys.argv[2], flush_interval=3600)
            for i in range(30):
                await client.track("async_exit", data={"i": i})

        asyncio.run(main())
        """,
        server.url,
        key,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert sorted(e["data"]["i"] for e in stored(data_dir, tmp_path)) == list(range(30))


def test_a_full_write_queue_503_is_retried_until_there_is_room(
    server_factory: type[ServerProcess], data_dir: Path, tmp_path: Path
) -> None:
    """The writer is held (another connection has SQLite's write lock, as in test_backpressure),
    other requests of the tenant fill its write queue, and the client's batch meets the 503."""
    key = new_key(data_dir)
    # A write queue of 100 events; no background catalog write may become the stalled group.
    server = server_factory(data_dir, {"HEADWATER_QUEUE_MAX_EVENTS": "100", "HEADWATER_CATALOG_INTERVAL": "3600"})
    server.start()
    others = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=90)

    def other(n: int) -> httpx.Response:
        return others.post("/v1/events", json={"events": [{"type": "other", "idempotency_key": f"o{n}-{i}"}
                                                          for i in range(30)]})  # fmt: skip

    with others, Client(server.url, key, flush_interval=0.05, backoff=FAST) as client:
        # Warm the key cache while the store is free, and let the worker apply the event.
        assert others.post("/v1/events?wait=processed", json={"type": "warm"}).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            with write_lock(data_dir / "headwater.db"):
                stalled = [pool.submit(other, 0)]  # the group the writer is stuck on
                time.sleep(0.3)
                stalled += [pool.submit(other, n) for n in (1, 2, 3)]  # 90 events queue behind it
                time.sleep(0.3)
                for i in range(30):
                    client.track("client", data={"i": i})
                deadline = time.monotonic() + 30
                while not (client.stats.last_error or "").startswith("503") and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert client.stats.last_error == "503: server is busy: retry later"
                assert client.stats.accepted == 0
            assert [f.result().status_code for f in stalled] == [200] * 4
        client.flush(timeout=60)
        stats = client.stats
    assert counts(stats) == settled(30, accepted=30)
    assert stats.retries > 0
    mine = [e for e in stored(data_dir, tmp_path) if e["type"] == "client"]
    assert sorted(e["data"]["i"] for e in mine) == list(range(30))


@contextlib.contextmanager
def page_limit(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any, Any]]:
    """A SQLite store whose file can be held at its size (a full disk) and let go."""
    limit = tmp_path / "max-pages"

    def fill(db: Path) -> None:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            limit.write_text(str(conn.execute("PRAGMA page_count").fetchone()[0]))

    yield {faults.PAGE_LIMIT_VARIABLE: str(limit)}, fill, lambda: limit.write_text("4294967294")


def test_a_full_disk_507_is_retried_until_there_is_room(
    server_factory: type[ServerProcess], data_dir: Path, tmp_path: Path
) -> None:
    key = new_key(data_dir)
    with page_limit(tmp_path) as (env, fill, free):
        server = server_factory(data_dir, env)
        server.start()
        fill(data_dir / "headwater.db")
        # The server says Retry-After: 30; the client is told to come back within half a second.
        backoff = Backoff(initial=0.05, maximum=0.5, max_retry_after=0.5)
        with Client(server.url, key, flush_interval=3600, backoff=backoff) as client:
            for i in range(200):
                # Incompressible and big: no free page of the file has room for them.
                client.track("full", data={"i": i, "blob": os.urandom(8192).hex()})
            # A flush sends the queue; its first answer (a 1.9 MB body to inflate) can take
            # seconds on a loaded machine, so the retries are waited for apart.
            with pytest.raises(TimeoutError, match=r"^200 events still unsent after 0.5 s$"):
                client.flush(timeout=0.5)
            deadline = time.monotonic() + 60
            while client.stats.retries == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.stats.retries > 0
            # Nothing goes in while the disk is full, however long the client tries.
            with pytest.raises(TimeoutError, match=r"^200 events still unsent after 0.5 s$"):
                client.flush(timeout=0.5)
            assert client.stats.accepted == 0
            assert client.stats.last_error == (
                "507: storage is full: nothing of this request was stored; retry once space is freed"
            )
            free()
            client.flush(timeout=60)
            assert counts(client.stats) == settled(200, accepted=200)
    assert sorted(e["data"]["i"] for e in stored(data_dir, tmp_path)) == list(range(200))


def test_importing_headwater_does_not_import_the_client() -> None:
    done = run_script("import sys, headwater; print('httpx' in sys.modules, 'headwater.client' in sys.modules)")
    assert (done.returncode, done.stdout) == (0, "False False\n")
    assert headwater.Client is Client and headwater.AsyncClient is AsyncClient
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = headwater.Nope  # type: ignore[attr-defined]
