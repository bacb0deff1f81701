"""The acknowledgement ledger under SIGKILL: client threads send events (singles and small
batches, each event with its own idempotency key) to a real `headwater serve` while the test
kills it with SIGKILL at random moments, 100 times, starting it again each time. The worker is
a `headwater worker` of its own, SIGKILLed now and then too (with Redis, the one `serve` starts
beside itself). Every acknowledgement (a 200 with the event's result) is written down here,
outside the server; what was not acknowledged is sent again with the same keys until it is.

What must hold at the end, whatever moments the kills hit: every acknowledged event is stored,
once, under the id it was acknowledged with; nothing is stored twice; every SQLite file of the
data dir passes `PRAGMA integrity_check`; and every derived effect exists exactly once: one
action per event from the trigger, a challenge's progress equal to the participant's events,
its points and its one badge.

The kill moments come from a seeded `random.Random`, but where in a write each kill lands is
up to the machine: what the test asserts are the invariants, the same whatever it hit.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from headwater.config import Settings
from tests.conftest import ServerProcess, WorkerProcess, make_key, server_args
from tests.processing import settle_with
from tests.test_topology import every_page

KILLS = 100
CLIENTS = 4
REQUESTS_PER_CLIENT = 120
SUBJECTS = 12
# After the server answers /healthz, it runs this long (seconds, uniformly drawn) before the kill.
KILL_AFTER = (0.05, 0.4)
# A separate worker is killed along with the server this often.
WORKER_KILL_CHANCE = 0.3
LEASE_SECONDS = 2
ENV = {"HEADWATER_LEASE_SECONDS": str(LEASE_SECONDS), "HEADWATER_SYNC_TIMEOUT": "60"}
TEN_POINTS = 5


@dataclass
class Ledger:
    """What the clients were told, kept by the test: idempotency key -> the acknowledged id."""

    acked: dict[str, str] = field(default_factory=dict)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    # An acknowledgement that contradicts an earlier one, or an answer no client should get.
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, events: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        with self.lock:
            for event, result in zip(events, results, strict=True):
                key = event["idempotency_key"]
                if result["status"] not in ("accepted", "duplicate") or not result["id"]:
                    self.wrong.append(f"{key}: {result}")
                    continue
                known = self.acked.setdefault(key, result["id"])
                if known != result["id"]:
                    self.wrong.append(f"{key} acknowledged as {known}, then as {result['id']}")


class Client(threading.Thread):
    """One connection's worth of requests: a fixed plan of singles and batches, each sent until
    it is answered with a 200. Once the plan is done, acknowledged requests are sent again
    (they must come back as duplicates of the same ids) until told to stop."""

    def __init__(self, number: int, url: str, key: str, ledger: Ledger) -> None:
        super().__init__(daemon=True, name=f"ledger-client-{number}")
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.ledger = ledger
        self.rng = random.Random(number)
        self.plan: list[list[dict[str, Any]]] = []
        for r in range(REQUESTS_PER_CLIENT):
            size = self.rng.choice((1, 1, 2, 3, 5))
            self.plan.append(
                [
                    {
                        "type": "buy",
                        "subject": f"s{self.rng.randrange(SUBJECTS)}",
                        "idempotency_key": f"c{number}-r{r}-{i}",
                        "data": {"client": number, "request": r, "i": i},
                    }
                    for i in range(size)
                ]
            )
        with ledger.lock:
            ledger.sent.update((e["idempotency_key"], e) for events in self.plan for e in events)
        self.done_planned = threading.Event()
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            for events in self.plan:
                self.until_answered(client, events)
            self.done_planned.set()
            while not self.stop.is_set():
                self.until_answered(client, self.rng.choice(self.plan))

    def until_answered(self, client: httpx.Client, events: list[dict[str, Any]]) -> None:
        body: Any = events[0] if len(events) == 1 else {"events": events}
        while True:
            try:
                response = client.post("/v1/events", json=body)
            except httpx.TransportError as exc:
                # Killed before, while or after it wrote: the answer is lost, so send it again.
                self.answers[type(exc).__name__] += 1
                time.sleep(0.02)
                continue
            self.answers[str(response.status_code)] += 1
            if response.status_code == 200:
                self.ledger.note(events, response.json()["results"])
                return
            if response.status_code != 503:
                with self.ledger.lock:
                    self.ledger.wrong.append(f"{response.status_code}: {response.text}")
                return
            time.sleep(0.02)  # the store is not ready yet (starting): as Retry-After says, again


def define(client: httpx.Client) -> dict[str, str]:
    def post(path: str, body: dict[str, Any]) -> str:
        response = client.post(path, json=body)
        assert response.status_code == 201, response.text
        return str(response.json().get("id", ""))

    post("/v1/badges", {"key": "gold", "name": "Gold"})
    every_ten = post(
        "/v1/challenges",
        {"name": "ten", "fact_type": "custom.buy", "metric": {"count": True}, "target": 10, "repeatable": True,
         "reward": {"points": TEN_POINTS}},
    )  # fmt: skip
    once = post(
        "/v1/challenges",
        {"name": "25", "fact_type": "custom.buy", "metric": {"count": True}, "target": 25, "reward": {"badge": "gold"}},
    )
    every_buy = post(
        "/v1/triggers", {"name": "every buy", "event_types": ["buy"], "action": {"type": "recommend", "config": {}}}
    )
    return {"every_ten": every_ten, "once": once, "every_buy": every_buy}


def sqlite_files(data_dir: Path) -> list[Path]:
    """Every SQLite database in the data dir (the log's file and each partition's), by header."""
    return sorted(path for path in data_dir.rglob("*") if path.is_file() and is_sqlite(path))


def is_sqlite(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(16) == b"SQLite format 3\x00"


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.timeout(900)
def test_every_acknowledged_event_and_effect_survives_a_hundred_sigkills_exactly_once(
    settings: Settings, server_factory: type[ServerProcess], worker_factory: type[WorkerProcess]
) -> None:
    # The worker is a `headwater worker` of its own, SIGKILLed now and then besides the server;
    # with the bus it is `serve`'s own (stopped by its parent's death, started with the server).
    separate_worker = settings.bus is None
    args = (*server_args(settings), *(("--no-worker",) if separate_worker else ()))
    key = make_key(settings, "t")
    data_dir = settings.data_dir
    env = {**ENV, **({"HEADWATER_STORE": settings.store} if settings.store else {})}
    env |= {"HEADWATER_BUS": settings.bus} if settings.bus else {}

    first = server_factory(data_dir, ENV, args=args)
    port, url = first.port, first.url
    first.start()
    first.drain()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=90) as admin:
        ids = define(admin)

    worker = worker_factory(data_dir, env).start() if separate_worker else None
    ledger = Ledger()
    clients = [Client(n, url, key, ledger) for n in range(CLIENTS)]
    for client in clients:
        client.start()

    began = time.monotonic()
    rng = random.Random(13)
    server = first
    worker_kills = 0
    for _ in range(KILLS):
        time.sleep(rng.uniform(*KILL_AFTER))
        server.kill()
        if worker is not None and rng.random() < WORKER_KILL_CHANCE:
            worker.kill()
            worker_kills += 1
            worker = worker_factory(data_dir, env).start()
        server = server_factory(data_dir, ENV, args=args)
        server.port, server.url = port, url  # the clients' address; SO_REUSEADDR lets it rebind at once
        server.start(timeout=60)
        server.drain()

    print(f"{KILLS} kills in {time.monotonic() - began:.1f} s")
    # The last server stays up: each client finishes its plan, then stops.
    for client in clients:
        assert client.done_planned.wait(300), f"{client.name} did not finish: {client.answers}"
        client.stop.set()
    for client in clients:
        client.join(60)
        assert not client.is_alive()
    answers = sum((c.answers for c in clients), Counter())
    assert ledger.wrong == []
    # Every kill lost answers: without that the test would have tested nothing.
    assert sum(n for name, n in answers.items() if not name.isdigit()) >= KILLS // 2, answers
    assert set(ledger.acked) == set(ledger.sent)
    if separate_worker:
        assert worker_kills >= 10

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as admin:
        settle_with(lambda body: admin.post("/v1/events?wait=processed", json=body), "t", settings)
        stored = every_page(admin, "/v1/events")
        # Nothing stored twice, awards included: ids and keys are each unique.
        assert [i for i, n in Counter(e["id"] for e in stored).items() if n > 1] == []
        keys = Counter(e["idempotency_key"] for e in stored if e["idempotency_key"] is not None)
        assert [k for k, n in keys.items() if n > 1] == []
        # Nothing acknowledged is missing, each under the id it was acknowledged with.
        buys = {e["idempotency_key"]: e for e in stored if e["type"] == "buy"}
        assert {k: e["id"] for k, e in buys.items()} == ledger.acked
        for k, e in buys.items():
            sent = ledger.sent[k]
            assert (e["subject"], e["data"]) == (sent["subject"], sent["data"])

        # One action per event from the trigger.
        actions = every_page(admin, "/v1/actions", trigger=ids["every_buy"])
        assert len(actions) == len({a["id"] for a in actions})
        assert sorted(a["event_id"] for a in actions) == sorted(e["id"] for e in buys.values())
        # Each participant's progress counts its events once; points and the badge were awarded once.
        per_subject = Counter(e["subject"] for e in buys.values())
        assert len(per_subject) == SUBJECTS
        completions = Counter(e["subject"] for e in stored if e["type"] == "challenge.completed")
        points = Counter(e["subject"] for e in stored if e["type"] == "points.awarded")
        badges = Counter(e["subject"] for e in stored if e["type"] == "badge.awarded")
        badge_reason = f"challenge:{ids['once']}"
        for subject, n in per_subject.items():
            assert n >= 25, per_subject  # the plan gives each subject enough for the badge
            person = admin.get(f"/v1/participants/{subject}").json()
            assert person == {
                "participant_id": subject,
                "points": TEN_POINTS * (n // 10),
                "level": None,
                "badges": [
                    {"badge": "gold", "awarded_at": person["badges"][0]["awarded_at"], "reason": badge_reason}
                ],
                "challenges": [
                    {"challenge_id": ids["every_ten"], "progress": n, "target": 10,
                     "completed_at": person["challenges"][0]["completed_at"], "streak": None},
                    {"challenge_id": ids["once"], "progress": n, "target": 25,
                     "completed_at": person["challenges"][1]["completed_at"], "streak": None},
                ],
            }  # fmt: skip
            assert (completions[subject], points[subject], badges[subject]) == (n // 10 + 1, n // 10, 1)

    # What the last SIGKILL leaves on disk is a sound database, every file of it.
    server.kill()
    if worker is not None:
        worker.kill()
    if settings.store is None:
        files = sqlite_files(data_dir)
        assert len(files) >= 2  # the log's file and the partitions'
        assert {path.name: integrity(path) for path in files} == {path.name: "ok" for path in files}
