"""Facts and gamification throughput: do worker processes keep up with batch ingest?

Workload (defaults): 100,000 events over 10,000 participants and 30 days, 50 event types,
200 challenges spread over those types (4 per fact type: count, daily sum, weekly distinct,
daily streak, rolling 7-day count, some with conditions, rewards of points and badges), in
1,000-event batches, on a real SQLite store (WAL, synchronous=FULL) in a temp dir. Every
event lands on a type with challenges: 3.6 challenge steps per event on average.

Phases, in one run, over the same log:
1. ingest: `log.append` of the batches, durable, 4 batches in flight (the core benchmark's
   batch phase uses 4 connections), so the writer's group commit joins them as it does for a
   server: the batch-ingest rate of the log itself, without HTTP;
2. facts, one worker process: the log of phase 1 (a copy, with no derived state) processed by
   one process running the server's `Worker` with the facts consumer only, timed from its go
   to every partition's checkpoint at its head (award events included);
3. facts, two worker processes: the same, on another copy, with two processes sharing the
   partitions by lease;
4. both at once: ingest as fast as it goes into a fresh store while two worker processes
   follow; the ingest rate, the largest lag seen and the time to catch up.

Targets (issue 11): two worker processes at least 1.6 times one, and at least the log's batch
ingest rate of the same events. Also reported: worker CPU per progress step (issue 5: about
15 µs in one process).

Per-event cost is proportional to the challenges on the event's fact type: the `--challenges`
figure spreads over `--types`, so doubling both keeps the per-event cost flat.

    .venv/bin/python bench/gamification.py [--events 100000] [--participants 10000] [--challenges 200] [--types 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headwater.config import Settings
from headwater.events import Event
from headwater.ids import new_event_ids, new_prefixed_id
from headwater.processing.gamification import ChallengeIn, compile_challenge
from headwater.runtime import tune_gc
from headwater.storage import open_store as headwater_store
from headwater.storage.base import Store
from headwater.storage.registry import BadgeRecord, ChallengeRecord
from headwater.storage.sqlite import MAIN_FILE, partition_file

BENCH_DIR = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL = 0.02
PARTITIONS = 8

TENANT = "bench"
BATCH = 1000
IN_FLIGHT = 4
START = datetime(2026, 4, 1, tzinfo=UTC)


def settings_for(where: Path | str) -> Settings:
    """The settings of a store: a data dir, or a PostgreSQL URL."""
    if isinstance(where, str) and where.startswith("postgresql://"):
        return replace(Settings(), store=where, partitions=PARTITIONS, webhook_worker=False)
    return replace(Settings(), data_dir=Path(where), partitions=PARTITIONS, webhook_worker=False)


def challenges(count: int, types: int, rng: random.Random) -> list[dict[str, Any]]:
    shapes: list[dict[str, Any]] = [
        {"metric": {"count": True}, "target": 5, "period": "all_time"},
        {"metric": {"sum": "data.amount"}, "target": 300, "period": "daily", "repeatable": True},
        {"metric": {"distinct": "data.sku"}, "target": 3, "period": "weekly"},
        {"metric": {"streak": "daily"}, "target": 3, "period": "all_time"},
        {"metric": {"count": True}, "target": 4, "period": "rolling:7d"},
    ]
    out = []
    for i in range(count):
        shape = dict(shapes[i % len(shapes)])
        if i % 3 == 0:
            shape["conditions"] = {"field": "data.amount", "op": "gt", "value": rng.choice([10, 50, 100])}
        shape["reward"] = {"points": 10} if i % 2 else {"points": 5, "badge": f"badge_{i % 20}"}
        out.append({"name": f"challenge {i}", "fact_type": f"custom.type_{i % types}", **shape})
    return out


def events(count: int, participants: int, types: int, rng: random.Random) -> list[list[Event]]:
    received = datetime.now(UTC)
    batches = []
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        ids = new_event_ids(size)
        batch = []
        for i in range(size):
            data = {"amount": rng.randint(1, 200), "sku": f"SKU-{rng.randint(1, 20)}"}
            batch.append(
                Event(
                    id=ids[i],
                    type=f"type_{rng.randrange(types)}",
                    subject=f"user_{rng.randrange(participants)}",
                    source="bench",
                    channel="web",
                    time=START + timedelta(seconds=rng.randrange(30 * 86400)),
                    received_at=received,
                    idempotency_key=None,
                    data=msgspec.Raw(msgspec.json.encode(data)),
                    tenant=TENANT,
                    mode="live",
                )
            )
        batches.append(batch)
    return batches


async def open_store(where: Path | str, definitions: list[dict[str, Any]]) -> Store:
    """A store (a data dir, or a PostgreSQL URL) with the badges and challenges of the workload."""
    store = headwater_store(settings_for(where))
    await store.start()
    now = datetime.now(UTC)
    for i in range(20):
        await store.registry.create_badge(TENANT, "live", BadgeRecord(f"badge_{i}", f"Badge {i}", None, None, now, now))
    for definition in definitions:
        rule = msgspec.convert(definition, ChallengeIn)
        compile_challenge("check", rule)
        definition_json = msgspec.Raw(msgspec.json.encode(rule))
        record = ChallengeRecord(new_prefixed_id("chl"), TENANT, "live", definition_json, now, now)
        await store.registry.put_challenge(record)
    return store


async def ingest(store: Store, batches: list[list[Event]], in_flight: int = IN_FLIGHT) -> float:
    queue = iter(batches)

    async def client() -> None:
        for batch in queue:
            await store.log.append(batch)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return time.perf_counter() - started


class Watch:
    """How far the workers on `directory` are, read on connections kept open: opening nine
    SQLite files for every look cost 2.3 ms of CPU, a tenth of a core at 50 looks a second,
    taken from the workers being timed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Used from one thread at a time, but not always the same one (phase 4's `to_thread`).
        self.main = self._open(directory / MAIN_FILE)
        self.parts: dict[int, sqlite3.Connection] = {}

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows `sql` selects from every partition's derived file there is yet."""
        found: list[tuple[Any, ...]] = []
        for p in range(PARTITIONS):
            try:
                if p not in self.parts:
                    self.parts[p] = self._open(partition_file(self.directory, p))
                found.extend(self.parts[p].execute(sql).fetchall())
            except sqlite3.OperationalError:  # not made yet
                self.parts.pop(p, None)
        return found

    def done(self) -> dict[int, int]:
        return dict(self.rows("SELECT partition, seq FROM checkpoints WHERE consumer = 'facts'"))

    def behind(self) -> int:
        """Events of every partition past the facts consumer's checkpoint there."""
        done, sql = self.done(), "SELECT count(*) FROM events WHERE partition = ? AND seq > ?"
        return sum(self.main.execute(sql, (p, done.get(p, 0))).fetchone()[0] for p in range(PARTITIONS))

    def caught_up(self) -> bool:
        """Whether the facts consumer's checkpoint is at every partition's head (an index probe
        each, where counting what is behind would take CPU from the workers)."""
        done, sql = self.done(), "SELECT coalesce(max(seq), 0) FROM events WHERE partition = ?"
        return all(self.main.execute(sql, (p,)).fetchone()[0] <= done.get(p, 0) for p in range(PARTITIONS))

    def split(self, count: int) -> bool:
        """Whether `count` workers hold the partitions between them, each its share."""
        owners = [r[0] for r in self.rows("SELECT owner FROM leases WHERE name LIKE 'partition:%'")]
        held = {o: owners.count(o) for o in owners}
        return len(held) == count and sum(held.values()) == PARTITIONS and max(held.values()) - min(held.values()) <= 1

    def logged(self) -> int:
        return int(self.main.execute("SELECT count(*) FROM events").fetchone()[0])

    def close(self) -> None:
        for conn in [self.main, *self.parts.values()]:
            conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def workers(where: Path | str, count: int, go: Path | None = None) -> Any:
    """`count` facts worker processes on `where` (a data dir, or a PostgreSQL URL), ready
    (imported) but not started: they start when `go` (by default in the data dir) exists."""
    go = go or Path(where) / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "facts_worker.py"), str(where), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield procs, go
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def process(directory: Path, count: int) -> tuple[float, float, int]:
    """Run `count` worker processes over the log in `directory` until nothing is behind, timed
    from the moment they have split the partitions (a worker that starts first holds them all
    for the second or so until it sees the other): (seconds, worker CPU seconds, events
    processed in that time)."""
    watch = Watch(directory)
    try:
        with workers(directory, count) as (procs, go):
            go.touch()
            while not watch.split(count):
                time.sleep(0.005)
            started = time.perf_counter()
            cpu_before = sum(cpu_seconds(p.pid) for p in procs)
            backlog, before = watch.behind(), watch.logged()
            while not watch.caught_up():
                time.sleep(POLL)
            elapsed = time.perf_counter() - started
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu_before
            processed = backlog + watch.logged() - before  # award events appended meanwhile count too
    finally:
        watch.close()
    return elapsed, cpu, processed


@dataclass
class Counts:
    facts: int
    steps: int
    progress: int
    completions: int
    badges: int
    points: int
    award_events: int


def counts(directory: Path) -> Counts:
    watch = Watch(directory)
    try:

        def total(sql: str) -> int:
            return sum(int(row[0]) for row in watch.rows(sql))

        award_events = "SELECT count(*) FROM events WHERE source = 'headwater'"
        return Counts(
            total("SELECT count(*) FROM fact_effects"),
            # Each fact's effects list the progress changes it made: the steps applied.
            sum(len(msgspec.json.decode(row[0])[0]) for row in watch.rows("SELECT effects FROM fact_effects")),
            total("SELECT count(*) FROM challenge_progress"),
            total("SELECT count(*) FROM challenge_completions"),
            total("SELECT count(*) FROM badge_awards"),
            total("SELECT count(*) FROM points_ledger"),
            int(watch.main.execute(award_events).fetchone()[0]),
        )
    finally:
        watch.close()


def copy_log(source: Path, target: Path) -> Path:
    """The log (and the registry) of `source` with no derived state: a fresh start for workers."""
    target.mkdir()
    shutil.copy(source / MAIN_FILE, target / MAIN_FILE)
    return target


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--challenges", type=int, default=200)
    parser.add_argument("--types", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tune_gc()  # as `headwater serve` does
    rng = random.Random(args.seed)
    definitions = challenges(args.challenges, args.types, rng)
    batches = events(args.events, args.participants, args.types, rng)
    total = sum(len(b) for b in batches)
    print(
        f"{total:,} events, {args.participants:,} participants, {args.challenges} challenges over "
        f"{args.types} fact types ({args.challenges / args.types:.1f} per type), batches of {BATCH:,};"
        f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 1. Ingest alone.
        store = await open_store(root / "ingest", definitions)
        ingest_s = await ingest(store, batches)
        await store.close()
        ingest_rate = total / ingest_s
        print(f"ingest   (log.append, durable):           {ingest_rate:>10,.0f} events/s  ({ingest_s:.2f} s)")

        # 2 and 3. The facts consumer in one worker process, then in two, over copies of that log.
        rates: dict[int, float] = {}
        for count in (1, 2):
            directory = copy_log(root / "ingest", root / f"workers-{count}")
            elapsed, cpu, processed = process(directory, count)
            made = counts(directory)
            rates[count] = processed / elapsed
            label = f"facts    ({count} worker process{'es' if count > 1 else ''}):"
            steps = max(made.steps * processed / (total + made.award_events), 1)
            print(
                f"{label:<43}{rates[count]:>10,.0f} events/s  ({processed:,} events in {elapsed:.2f} s;"
                f" worker CPU {cpu:.2f} s = {cpu / elapsed:.0%} of a core,"
                f" {cpu / steps * 1e6:.1f} µs per progress step)"
            )
        print(
            f"         {made.facts:,} facts counted, {made.steps:,} progress steps"
            f" ({made.steps / total:.1f} per event),"
            f" {made.progress:,} progress rows, {made.completions:,} completions, {made.badges:,} badges,"
            f" {made.points:,} ledger entries, {made.award_events:,} award events"
        )
        scaling = rates[2] / rates[1]
        print(f"         two processes / one: {scaling:.2f}x (target >= 1.6x: {'PASS' if scaling >= 1.6 else 'MISS'})")
        keeps_up = rates[2] / ingest_rate
        print(
            f"         two processes / ingest: {keeps_up:.0%} (target >= 100%: {'PASS' if keeps_up >= 1 else 'MISS'})"
        )

        # 4. Both at once: ingest into a fresh store while two worker processes follow.
        directory = root / "both"
        store = await open_store(directory, definitions)
        lags: list[int] = []
        watch = Watch(directory)
        with workers(directory, 2) as (_, go):
            go.touch()
            started = time.perf_counter()
            ingesting = asyncio.create_task(ingest(store, batches))
            while not ingesting.done():
                lags.append(await asyncio.to_thread(watch.behind))
                await asyncio.sleep(0.1)
            ingest_both_s = await ingesting
            while not await asyncio.to_thread(watch.caught_up):
                await asyncio.sleep(POLL)
            catch_up_s = time.perf_counter() - started - ingest_both_s
        watch.close()
        await store.close()
        print(
            f"both     ingest {total / ingest_both_s:,.0f} events/s while two workers follow"
            f" ({total / ingest_both_s / ingest_rate:.0%} of ingest alone); largest lag {max(lags, default=0):,}"
            f" events; all processed {catch_up_s:.2f} s after the last batch"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine lowers every figure)")


if __name__ == "__main__":
    asyncio.run(main())
