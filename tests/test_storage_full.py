"""A full disk under a real `headwater serve` (and the worker it runs), on SQLite and PostgreSQL.

SQLite's log file is capped with `max_page_count` (`HEADWATER_FAULT_MAX_PAGES`, headwater.faults:
SQLite fails a write that needs a page more exactly as on a full disk, SQLITE_FULL). PostgreSQL's
database lives in a tablespace on a small tmpfs the test mounts and then fills with a file: the
server's own "could not extend file ... No space left on device".

What must hold: ingest answers 507 with `Retry-After` and a clear error, for single events,
batches and a dialect alike; nothing it refused is stored, not a part of a batch; reads go on
answering; the worker does not die, and loses nothing; and once there is room again the same
processes take writes again by themselves, without a restart.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater import faults
from headwater.config import Settings
from tests.conftest import ServerProcess, make_key, server_args
from tests.processing import settle_with
from tests.servers import TEMPLATE, Postgres
from tests.test_topology import every_page

FULL = {"error": "storage is full: nothing of this request was stored; retry once space is freed", "details": []}
# Big enough that no stored page has room for it: each needs pages the full store cannot add.
# Random (incompressible) text, so that PostgreSQL's TOAST cannot shrink it into free space.
BLOB_CHARS = 64 * 1024
PROBES = 2000


@dataclass
class Disk:
    """The settings of a store whose disk the test fills and frees, and the server's environment."""

    settings: Settings
    env: dict[str, str]
    fill: Any
    free: Any


@contextlib.contextmanager
def sqlite_disk(settings: Settings, tmp_path: Path) -> Iterator[Disk]:
    limit = tmp_path / "max-pages"
    db = settings.data_dir / "headwater.db"

    def fill() -> None:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
        limit.write_text(str(pages))  # no page more than the file has now

    yield Disk(settings, {faults.PAGE_LIMIT_VARIABLE: str(limit)}, fill, lambda: limit.write_text("4294967294"))


@contextlib.contextmanager
def postgres_disk(settings: Settings, server: Postgres) -> Iterator[Disk]:
    """A database of the test's own in a tablespace on a 48 MiB tmpfs, dropped with the
    tablespace at the end. The server runs as nobody: the directory is theirs, and mounted
    outside pytest's directories, which only root may enter."""
    mount = Path(tempfile.mkdtemp(prefix="headwater-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mount)], check=True)
    space = mount / "tablespace"
    space.mkdir()
    shutil.chown(space, "nobody", "nogroup")
    name = f"small_{os.getpid()}_{random.Random().randrange(10**9)}"
    filler = mount / "filler"
    try:
        server.sql("postgres", f"CREATE TABLESPACE {name} LOCATION '{space}'")
        server.sql("postgres", f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} TABLESPACE {name}")

        def fill() -> None:
            with filler.open("wb", buffering=0) as out:
                for chunk in (1 << 20, 1 << 12, 1):
                    with contextlib.suppress(OSError):  # ENOSPC: on to smaller writes, to the last byte
                        while True:
                            out.write(os.urandom(chunk))

        yield Disk(replace(settings, store=server.url(name)), {}, fill, lambda: filler.unlink(missing_ok=True))
    finally:
        with contextlib.suppress(Exception):
            server.sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        with contextlib.suppress(Exception):
            server.sql("postgres", f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


@pytest.fixture
def disk(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Disk]:
    if settings.store is None:
        with sqlite_disk(settings, tmp_path) as found:
            yield found
    else:
        with postgres_disk(settings, request.getfixturevalue("postgres")) as found:
            yield found


def blob(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=BLOB_CHARS))


def buy(key: str, subject: str, rng: random.Random | None = None) -> dict[str, Any]:
    data = {"blob": blob(rng)} if rng is not None else {}
    return {"type": "buy", "subject": subject, "idempotency_key": key, "data": data}


def assert_full(response: httpx.Response) -> None:
    assert (response.status_code, response.json()) == (507, FULL), response.text
    assert response.headers["Retry-After"] == "30"


def test_a_full_disk_is_507_stores_nothing_half_and_is_recovered_from_in_the_same_process(
    disk: Disk, server_factory: type[ServerProcess]
) -> None:
    settings = disk.settings
    key = make_key(settings, "t")
    env = {**disk.env, "HEADWATER_SYNC_TIMEOUT": "60", "HEADWATER_LEASE_SECONDS": "2"}
    server = server_factory(settings.data_dir, env, args=tuple(server_args(settings)))
    server.start(timeout=60)
    output = server.drain()
    rng = random.Random(5)
    acked: dict[str, str] = {}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        trigger = client.post(
            "/v1/triggers", json={"name": "b", "event_types": ["buy"], "action": {"type": "recommend", "config": {}}}
        )
        assert trigger.status_code == 201, trigger.text
        challenge = {"name": "3", "fact_type": "custom.buy", "metric": {"count": True}, "target": 3,
                     "repeatable": True, "reward": {"points": 1}}  # fmt: skip
        assert client.post("/v1/challenges", json=challenge).status_code == 201
        before = client.post("/v1/events", json={"events": [buy(f"b{i}", f"s{i % 4}") for i in range(20)]})
        assert before.status_code == 200, before.text
        acked |= {f"b{i}": r["id"] for i, r in enumerate(before.json()["results"])}

        disk.fill()
        # What room is left (the pages SQLite has free, PostgreSQL's half-filled pages) takes a few more.
        for n in range(PROBES):
            probe = buy(f"p{n}", f"s{n % 4}", rng)
            answer = client.post("/v1/events", json=probe)
            if answer.status_code == 507:
                break
            assert answer.status_code == 200, answer.text
            acked[probe["idempotency_key"]] = answer.json()["results"][0]["id"]
        else:
            raise AssertionError(f"{PROBES} big events and the disk is not full")
        assert_full(answer)
        refused = [probe]
        # Full it stays: the same event again, a batch (a small event first: all or nothing),
        # and a dialect's ingest route.
        assert_full(client.post("/v1/events", json=probe))
        batch = [buy("q0", "s0"), *(buy(f"q{i}", f"s{i % 4}", rng) for i in range(1, 5))]
        assert_full(client.post("/v1/events", json={"events": batch}))
        refused += batch
        cloud = {"specversion": "1.0", "id": "c1", "source": "shop", "type": "buy", "subject": "s1",
                 "data": {"blob": blob(rng)}}  # fmt: skip
        ce = {"Content-Type": "application/cloudevents+json"}
        assert_full(client.post("/v1/cloudevents", json=cloud, headers=ce))
        # Reads answer as before.
        listed = client.get("/v1/events", params={"limit": 1, "type": "buy"})
        assert listed.status_code == 200, listed.text
        assert listed.json()["data"][0]["idempotency_key"] in acked
        assert client.get(f"/v1/events/{acked['b0']}").json()["idempotency_key"] == "b0"
        assert client.get("/v1/triggers").status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200

        disk.free()
        # The same process takes them now: each is new (accepted, not a duplicate of a half write).
        again = client.post("/v1/events", json=probe)
        assert again.status_code == 200, again.text
        assert [r["status"] for r in again.json()["results"]] == ["accepted"]
        acked[probe["idempotency_key"]] = again.json()["results"][0]["id"]
        again = client.post("/v1/events", json={"events": batch})
        assert again.status_code == 200, again.text
        assert [r["status"] for r in again.json()["results"]] == ["accepted"] * len(batch)
        acked |= {e["idempotency_key"]: r["id"] for e, r in zip(batch, again.json()["results"], strict=True)}
        ce_again = client.post("/v1/cloudevents", json=cloud, headers=ce)
        assert (ce_again.status_code, ce_again.json()["accepted"]) == (202, 1), ce_again.text

        settle_with(lambda body: client.post("/v1/events?wait=processed", json=body), "t", settings)
        stored = [e for e in every_page(client, "/v1/events", type="buy") if e["source"] != "shop"]
        assert {e["idempotency_key"]: e["id"] for e in stored} == acked
        assert len(stored) == len(acked)
        assert {e["idempotency_key"] for e in refused} <= set(acked)
        # The worker lived through it and lost nothing: one action per event, points per three.
        actions = every_page(client, "/v1/actions", trigger=trigger.json()["id"])
        assert sorted(a["event_id"] for a in actions) == sorted([*acked.values(), ce_again.json()["results"][0]["id"]])
        per_subject = Counter(e["subject"] for e in stored) + Counter({"s1": 1})
        for subject, n in per_subject.items():
            assert client.get(f"/v1/participants/{subject}").json()["points"] == n // 3
    assert server.proc is not None and server.proc.poll() is None
    assert [line for line in output if b"starting it again" in line or b"Traceback" in line] == []
    server.stop()
