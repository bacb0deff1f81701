"""Facts and gamification throughput: can the facts consumer keep up with batch ingest?

Workload (defaults): 100,000 events over 10,000 participants and 30 days, 50 event types,
200 challenges spread over those types (4 per fact type: count, daily sum, weekly distinct,
daily streak, rolling 7-day count, some with conditions, rewards of points and badges), in
1,000-event batches, on a real SQLite store (WAL, synchronous=FULL) in a temp dir. Every
event lands on a type with challenges: 3.6 challenge steps per event on average.

Three phases, each on a fresh store:
1. ingest: `Store.append` of the batches, durable, 4 batches in flight (the core benchmark's
   batch phase uses 4 connections), so the writer's group commit joins them as it does for
   a server: the batch-ingest rate of the log itself, without HTTP (above the served rate);
2. facts: the facts consumer (`FactsConsumer.run_once`, the server's code and settings)
   over the same events already in the log: progress, completions and awards;
3. the store's floor: the progress rows, distinct values and effects the consumer wrote in
   phase 2, read and written again on a fresh SQLite file in 8,000-event batches (the
   consumer's batch when behind) with the same settings, and no logic at all: one look-up
   and one write per row, then the commit. No consumer over this layout can beat it, so it
   says how much of phase 2 is the store and how much the Python around it;
4. both at once, as a server runs them: ingest as fast as it goes while the consumer
   follows; reports the ingest rate, the largest lag seen and the time to catch up.

The target (issue 5): facts processing keeps up with batch ingest, i.e. phase 2's rate is
at least phase 1's, so that at full ingest the consumer's lag stays bounded.

Per-event cost is proportional to the challenges on the event's fact type: the `--challenges`
figure spreads over `--types`, so doubling both keeps the per-event cost flat.

    .venv/bin/python bench/gamification.py [--events 100000] [--participants 10000] [--challenges 200] [--types 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headwater.storage.sqlite_core import WRITER_CACHE_KIB

from headwater.events import Event
from headwater.ids import new_event_ids, new_prefixed_id
from headwater.processing.facts import FactsConsumer
from headwater.processing.gamification import ChallengeIn, GamificationLoader, compile_challenge
from headwater.runtime import tune_gc
from headwater.storage.registry import BadgeRecord, ChallengeRecord
from headwater.storage.sqlite import SqliteStore

TENANT = "bench"
BATCH = 1000
IN_FLIGHT = 4
START = datetime(2026, 4, 1, tzinfo=UTC)


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


async def open_store(directory: Path, definitions: list[dict[str, Any]]) -> SqliteStore:
    store = SqliteStore(directory / "headwater.db")
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


async def ingest(store: SqliteStore, batches: list[list[Event]], in_flight: int = IN_FLIGHT) -> float:
    queue = iter(batches)

    async def client() -> None:
        for batch in queue:
            await store.log.append(batch)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return time.perf_counter() - started


async def drain(consumer: FactsConsumer) -> None:
    while await consumer.run_once():
        pass


@dataclass
class Counts:
    effects: int
    progress: int
    completions: int
    badges: int
    points: int
    award_events: int


async def counts(store: SqliteStore) -> Counts:
    def run(conn: sqlite3.Connection) -> Counts:
        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        return Counts(
            one("SELECT count(*) FROM fact_effects"),
            one("SELECT count(*) FROM challenge_progress"),
            one("SELECT count(*) FROM challenge_completions"),
            one("SELECT count(*) FROM badge_awards"),
            one("SELECT count(*) FROM points_ledger"),
            one("SELECT count(*) FROM events WHERE source = 'headwater'"),
        )

    result: Counts = await store.read(run)
    return result


FLOOR_BATCH = 8_000  # events per write: the consumer's batch when behind the log


def store_floor(source: Path, directory: Path) -> float:
    """Seconds to read and write, batch by batch, the rows the facts consumer wrote into the
    store at `source`, with no logic: the floor under any consumer over this layout."""
    src = sqlite3.connect(source)
    tables = ("challenge_progress", "challenge_values", "fact_effects")
    marks = ",".join("?" * len(tables))
    ddl = [r[0] for r in src.execute(f"SELECT sql FROM sqlite_master WHERE name IN ({marks})", tables)]
    progress = src.execute("SELECT * FROM challenge_progress ORDER BY seq").fetchall()
    values = src.execute("SELECT * FROM challenge_values").fetchall()
    effects = src.execute("SELECT * FROM fact_effects").fetchall()
    src.close()
    last = progress[-1][5] if progress else 0
    batches = max(1, -(-last // FLOOR_BATCH))

    def share(rows: list[Any], k: int) -> list[Any]:
        return rows[len(rows) * k // batches : len(rows) * (k + 1) // batches]

    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    for pragma in ("journal_mode = WAL", "synchronous = FULL", f"cache_size = -{WRITER_CACHE_KIB}"):
        conn.execute(f"PRAGMA {pragma}")
    for statement in ddl:
        conn.execute(statement)

    def look_up(table: str, keys: list[tuple[Any, ...]]) -> None:
        for i in range(0, len(keys), 2000):
            chunk = keys[i : i + 2000]
            wanted = ",".join(["(?,?,?)"] * len(chunk))
            conn.execute(
                f"WITH w(c, p, b) AS (VALUES {wanted}) SELECT t.* FROM w JOIN {table} t"
                " ON t.challenge = w.c AND t.participant_id = w.p AND t.bucket = w.b",
                [x for key in chunk for x in key],
            ).fetchall()

    started = time.perf_counter()
    low = 0
    for k in range(batches):
        rows = []
        while low < len(progress) and progress[low][5] <= (k + 1) * FLOOR_BATCH:
            rows.append(progress[low])
            low += 1
        new_values, new_effects = share(values, k), share(effects, k)
        conn.execute("BEGIN IMMEDIATE")
        look_up("challenge_progress", [r[:3] for r in rows])
        look_up("challenge_values", [r[:3] for r in new_values])
        conn.executemany(
            "INSERT INTO challenge_progress VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
            " value = excluded.value, reached_at = excluded.reached_at, seq = excluded.seq",
            rows,
        )
        conn.executemany("INSERT OR IGNORE INTO challenge_values VALUES (?, ?, ?, ?, ?)", new_values)
        conn.executemany("INSERT OR REPLACE INTO fact_effects VALUES (?, ?)", new_effects)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


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
        # 1. Ingest alone.
        store = await open_store(Path(tmp) / "ingest", definitions)
        ingest_s = await ingest(store, batches)
        ingest_rate = total / ingest_s
        print(f"ingest  (Store.append, durable):        {ingest_rate:>10,.0f} events/s  ({ingest_s:.2f} s)")

        # 2. The facts consumer over the log just written.
        consumer = FactsConsumer(store, GamificationLoader(store))
        started = time.perf_counter()
        await drain(consumer)
        facts_s = time.perf_counter() - started
        made = await counts(store)
        # Award events are in the log too and were processed in the same run.
        applied = total + made.award_events
        facts_rate = applied / facts_s
        verdict = "PASS" if facts_rate >= ingest_rate else "MISS"
        print(f"facts   (progress + awards):            {facts_rate:>10,.0f} events/s  ({facts_s:.2f} s)")
        print(
            f"        {made.effects:,} facts counted for challenges, {made.progress:,} progress rows,"
            f" {made.completions:,} completions, {made.badges:,} badges, {made.points:,} ledger entries,"
            f" {made.award_events:,} award events"
        )
        print(
            f"        {facts_s / applied * 1e6:.1f} µs per event; facts/ingest = {facts_rate / ingest_rate:.0%}"
            f" (target >= 100%: {verdict})"
        )
        await store.close()

        # 3. The store's floor under phase 2: its rows read and written again, with no logic.
        floor_s = store_floor(Path(tmp) / "ingest" / "headwater.db", Path(tmp))
        floor_rate = applied / floor_s
        print(
            f"floor   (the same rows, no logic):      {floor_rate:>10,.0f} events/s  ({floor_s:.2f} s;"
            f" {floor_s / applied * 1e6:.1f} µs per event, {floor_rate / ingest_rate:.0%} of ingest;"
            f" {floor_s / facts_s:.0%} of the consumer's time)"
        )

        # 4. Both at once, as a server runs them.
        store = await open_store(Path(tmp) / "both", definitions)
        consumer = FactsConsumer(store, GamificationLoader(store))
        lags: list[int] = []
        done = asyncio.Event()

        async def follow() -> None:
            while True:
                if not await consumer.run_once():
                    if done.is_set():
                        return
                    await asyncio.sleep(0.01)  # caught up: poll, as the server's consumer does

        async def watch() -> None:
            while not done.is_set():
                head = await store.read(lambda c: c.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
                lags.append(head - (consumer.position or 0))
                await asyncio.sleep(0.05)

        follower = asyncio.create_task(follow())
        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        await ingest(store, batches)
        ingest_both_s = time.perf_counter() - started
        done.set()
        await watcher
        await follower
        await drain(consumer)
        both_s = time.perf_counter() - started
        print(
            f"both    ingest {total / ingest_both_s:,.0f} events/s while the consumer follows"
            f" ({total / ingest_both_s / ingest_rate:.0%} of ingest alone); largest lag {max(lags, default=0):,}"
            f" events; all processed {both_s - ingest_both_s:.2f} s after the last batch"
        )
        await store.close()
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other work on the machine lowers every figure)")


if __name__ == "__main__":
    asyncio.run(main())
