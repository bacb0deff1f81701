"""Headwater on each backend, side by side, in one run: embedded SQLite, PostgreSQL (one and
two API processes) and PostgreSQL with the Redis Streams bus.

Servers: a PostgreSQL cluster and a redis-server of the run's own, on loopback, in temp dirs
(tests/servers.py), durable as Headwater's SQLite is (synchronous=FULL): PostgreSQL with its
defaults (`fsync` and `full_page_writes` on; Headwater's connections ask for
`synchronous_commit=on`), Redis with `appendonly yes` and `appendfsync always`.

Phases, per backend, on a fresh data dir or database each:
1. ingest: `headwater serve` (API + its worker child, no rule defined), wrk as in `run.py`:
   single events on 32 connections, then 1,000-event batches on 4 (the `accepted` counts make
   the rate); then the worker's lag when the load stops and how long it takes to reach the head;
2. facts (SQLite and PostgreSQL): the workload of `gamification.py` appended through
   `log.append` (4 batches in flight), then the facts consumer in one worker process and in
   two (`facts_worker.py`) over copies of that log, timed from the moment they have split the
   partitions until every partition's checkpoint is at its head. With Redis the workers read
   the same store (the bus carries offsets, not events), and a log appended behind the API's
   back reaches the bus only through the catch-up publisher, so that row would time it.

Targets (issue 12): PostgreSQL batch ingest at least 75% of SQLite's in the same run; facts
throughput growing with worker processes (two above one).

    .venv/bin/python bench/backends.py [--seconds 6] [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gamification
import redis as redis_client
from run import (
    BATCH_CONNECTIONS,
    SINGLE_CONNECTIONS,
    Load,
    PhaseError,
    Server,
    catch_up,
    check_contract,
    create_key,
    descendants,
    free_port,
    headwater_command,
    running,
    stat_fields,
    ticks,
    wrk,
)
from workload import BATCH_SIZE, batch_body, single_body

from headwater.runtime import tune_gc
from headwater.storage.base import Store
from tests.servers import Postgres, Redis, postgres_server, redis_server

POLL = 0.05


@dataclass
class Backend:
    name: str
    store: bool  # PostgreSQL, else SQLite
    bus: bool = False
    processes: int = 1


BACKENDS = [
    Backend("sqlite", store=False),
    Backend("postgres", store=True),
    Backend("postgres, 2 API processes", store=True, processes=2),
    Backend("postgres+redis", store=True, bus=True),
]


@dataclass
class Ingest:
    single: Load
    batch: Load
    lag: dict[str, float | None]
    processes: int


@dataclass
class Facts:
    ingest_rate: float
    rates: dict[int, float] = field(default_factory=dict)  # per worker processes
    cpu: dict[int, float] = field(default_factory=dict)  # the workers', in cores
    server_cpu: dict[int, float] = field(default_factory=dict)  # PostgreSQL's, in cores


class Bench:
    def __init__(self, work: Path, seconds: int, postgres: Postgres, redis: Redis) -> None:
        self.work, self.seconds, self.postgres, self.redis = work, seconds, postgres, redis
        self.single_file = work / "single.json"
        self.single_file.write_bytes(single_body())
        self.batch_file = work / "batch.json"
        self.batch_file.write_bytes(batch_body())
        self.ingests: dict[str, Ingest] = {}
        self.facts: dict[str, Facts] = {}
        self.broken: dict[str, str] = {}

    def phase(self, name: str, fn: Any, *args: Any) -> None:
        print(f"running: {name} ...", flush=True)
        try:
            fn(*args)
        except (PhaseError, OSError, ValueError, AssertionError) as exc:
            self.broken[name] = str(exc)
            print(f"  {name} BROKEN: {exc}", flush=True)

    def where(self, backend: Backend, label: str) -> list[str]:
        """The store (and bus) options of a fresh data dir or database."""
        if not backend.store:
            return ["--data-dir", str(self.work / label)]
        where = ["--store", self.postgres.url(self.postgres.new_database())]
        return [*where, "--bus", self.redis.url] if backend.bus else where

    def ingest(self, backend: Backend) -> None:
        label = backend.name.replace(" ", "").replace(",", "-").replace("+", "-")
        where = self.where(backend, label)
        if backend.bus:
            with redis_client.Redis.from_url(self.redis.url) as client:
                client.flushdb()  # a Redis of the run's own: each backend starts empty
        command = headwater_command()
        if not backend.store:
            Path(where[1]).mkdir()
        key = create_key(command, where)
        port = free_port()
        argv = [*command, "serve", "--host", "127.0.0.1", "--port", str(port), *where]
        if backend.processes > 1:
            argv += ["--processes", str(backend.processes)]
        server = Server(backend.name, argv, self.work / f"{label}.log", port, workers=True)
        with running(server):
            url = f"{server.url}/v1/events"
            check_contract(url, self.single_file.read_bytes(), key, 1)
            check_contract(url, self.batch_file.read_bytes(), key, BATCH_SIZE)
            single = self.measure(server, self.single_file, key, SINGLE_CONNECTIONS)
            batch = self.measure(server, self.batch_file, key, BATCH_CONNECTIONS)
            lag = catch_up(command, where, timeout=10.0 * self.seconds)
        self.ingests[backend.name] = Ingest(single, batch, lag, backend.processes)

    def measure(self, server: Server, body_file: Path, key: str, connections: int) -> Load:
        url = f"{server.url}/v1/events"
        wrk(url, body_file, key, connections, 1)  # warm-up
        server.check_alive()
        api_before, below_before = server.cpu_seconds()
        postgres_before = server_cpu_seconds(self.postgres)
        load = wrk(url, body_file, key, connections, self.seconds)
        server.check_alive()
        api_after, below_after = server.cpu_seconds()
        load.server_cpu_s = api_after - api_before + below_after - below_before
        load.worker_cpu_s = below_after - below_before
        load.extra["postgres_cpu_s"] = server_cpu_seconds(self.postgres) - postgres_before
        return load


# --- facts ------------------------------------------------------------------------------------


class Watch:
    """How far the facts workers are, through the store's own protocols (any backend)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def split(self, count: int) -> bool:
        leases = await self.store.derived.leases(datetime.now(UTC))
        owners = [owner for name, owner in leases.items() if name.startswith("partition:")]
        held = {o: owners.count(o) for o in owners}
        return (
            len(held) == count
            and sum(held.values()) == gamification.PARTITIONS
            and max(held.values()) - min(held.values()) <= 1
        )

    async def done(self) -> dict[int, int]:
        checkpoints = await self.store.derived.checkpoints()
        return {p: seq for (consumer, p), seq in checkpoints.items() if consumer == "facts"}

    async def caught_up(self) -> bool:
        heads, done = await self.store.log.partition_heads(), await self.done()
        return all(head <= done.get(p, 0) for p, head in heads.items())

    async def behind(self) -> int:
        done = await self.done()
        return sum([await self.store.log.count_after(p, done.get(p, 0)) for p in range(gamification.PARTITIONS)])


def server_cpu_seconds(server: Postgres) -> float:
    """User + system CPU of the PostgreSQL server and its backends so far (those that exited
    too, through the postmaster's counters)."""
    assert server.process is not None
    own = stat_fields(server.process.pid)
    assert own is not None
    return ticks(own, 11, 12, 13, 14) + sum(ticks(f, 11, 12, 13, 14) for f in descendants(server.process.pid).values())


async def process(where: str, count: int) -> tuple[float, float, int]:
    """`count` facts worker processes over the log at `where` until nothing is behind: (seconds,
    worker CPU seconds, events processed, award events included)."""
    store = gamification.headwater_store(gamification.settings_for(where))
    await store.start()
    watch = Watch(store)
    try:
        with gamification.workers(where, count, go=Path(tempfile.mkdtemp()) / "go") as (procs, go):
            go.touch()
            while not await watch.split(count):
                await asyncio.sleep(0.005)
            started = time.perf_counter()
            cpu_before = sum(gamification.cpu_seconds(p.pid) for p in procs)
            backlog, head = await watch.behind(), await store.log.head()
            while not await watch.caught_up():
                await asyncio.sleep(POLL)
            elapsed = time.perf_counter() - started
            cpu = sum(gamification.cpu_seconds(p.pid) for p in procs) - cpu_before
            processed = backlog + await store.log.head() - head
    finally:
        await store.close()
    return elapsed, cpu, processed


class FactsBench:
    def __init__(self, bench: Bench, events: int) -> None:
        self.bench = bench
        rng = random.Random(7)
        self.definitions = gamification.challenges(200, 50, rng)
        self.batches = gamification.events(events, 10_000, 50, rng)
        self.total = sum(len(b) for b in self.batches)

    def copies(self, backend: Backend) -> tuple[str, list[str]]:
        """A log, and two copies of it with no derived state: the first to append to."""
        if backend.store:
            server = self.bench.postgres
            source = server.new_database()
            copies = [f"{source}_w{n}" for n in (1, 2)]
            return server.url(source), copies
        source = self.bench.work / "facts-sqlite"
        return str(source), [str(self.bench.work / f"facts-sqlite-w{n}") for n in (1, 2)]

    def run(self, backend: Backend) -> None:
        asyncio.run(self._run(backend))

    async def _run(self, backend: Backend) -> None:
        source, copies = self.copies(backend)
        store = await gamification.open_store(source, self.definitions)
        try:
            ingest_s = await gamification.ingest(store, self.batches)
        finally:
            await store.close()
        facts = Facts(self.total / ingest_s)
        for count, copy in zip((1, 2), copies, strict=True):
            if backend.store:
                name = source.rsplit("/", 1)[1]
                await asyncio.to_thread(self.bench.postgres.sql, "postgres", f"CREATE DATABASE {copy} TEMPLATE {name}")
                target = self.bench.postgres.url(copy)
            else:
                target = str(gamification.copy_log(Path(source), Path(copy)))
            server_before = server_cpu_seconds(self.bench.postgres)
            elapsed, cpu, processed = await process(target, count)
            facts.rates[count], facts.cpu[count] = processed / elapsed, cpu / elapsed
            if backend.store:
                facts.server_cpu[count] = (server_cpu_seconds(self.bench.postgres) - server_before) / elapsed
        self.bench.facts[backend.name] = facts


# --- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def cost(load: Load, processes: int) -> str:
    """CPU per accepted event, µs: API + worker + PostgreSQL. With more than one API process the
    others are children of the first, as the worker is, so the first two go together."""
    if not load.accepted:
        return "-"
    worker = (load.worker_cpu_s or 0) / load.accepted
    api = (load.server_cpu_s or 0) / load.accepted - worker
    postgres = load.extra["postgres_cpu_s"] / load.accepted
    if processes > 1:
        return f"({(api + worker) * 1e6:.0f})+{postgres * 1e6:.0f}"
    return f"{api * 1e6:.0f}+{worker * 1e6:.0f}+{postgres * 1e6:.0f}"


def report(bench: Bench) -> None:
    print("\ningest over HTTP (`headwater serve` with its worker; wrk, as bench/run.py)")
    print(
        f"{'backend':<28}{'single ev/s':>12}{'p99 ms':>8}{'batch ev/s':>12}{'p99 ms':>8}"
        f"{'vs sqlite':>10}{'lag':>9}{'caught up':>10}{'µs/event single':>17}{'batch':>12}"
    )
    base = bench.ingests.get("sqlite")
    for name, ingest in bench.ingests.items():
        ratio = ingest.batch.events_per_s / base.batch.events_per_s if base else None
        caught = ingest.lag["caught_up_s"]
        failures = ingest.single.failures + ingest.batch.failures
        costs = cost(ingest.single, ingest.processes), cost(ingest.batch, ingest.processes)
        print(
            f"{name:<28}{ingest.single.events_per_s:>12,.0f}{ingest.single.p99_ms:>8.1f}"
            f"{ingest.batch.events_per_s:>12,.0f}{ingest.batch.p99_ms:>8.1f}"
            f"{'' if ratio is None else f'{ratio:.0%}':>10}{int(ingest.lag['lag_at_end'] or 0):>9,}"
            f"{'-' if caught is None else f'{caught:.1f} s':>10}{costs[0]:>17}{costs[1]:>12}"
            + (f"  ({failures} non-200s)" if failures else "")
        )
    print("  (µs/event: CPU per accepted event of the API process + the worker + PostgreSQL;")
    print("   (API processes and the worker together) + PostgreSQL where there are two API processes)")
    print("\nfacts (the gamification workload: log.append, then 1 and 2 facts worker processes)")
    print(
        f"{'store':<28}{'ingest ev/s':>12}{'1 worker':>10}{'2 workers':>11}{'2 / 1':>7}"
        f"{'workers cpu 1, 2':>18}{'postgres cpu 1, 2':>19}"
    )
    for name, facts in bench.facts.items():
        one, two = facts.rates.get(1), facts.rates.get(2)
        server = f"{facts.server_cpu[1]:.0%}, {facts.server_cpu[2]:.0%}" if facts.server_cpu else ""
        print(
            f"{name:<28}{facts.ingest_rate:>12,.0f}{one or 0:>10,.0f}{two or 0:>11,.0f}"
            f"{(two or 0) / (one or 1):>6.2f}x"
            f"{f'{facts.cpu.get(1, 0):.0%}, {facts.cpu.get(2, 0):.0%}':>18}{server:>19}"
        )
    print("  (cpu: of one core, 200% being the whole machine)")
    print("\ntargets")
    pg, sqlite = bench.ingests.get("postgres"), bench.ingests.get("sqlite")
    if pg and sqlite:
        share = pg.batch.events_per_s / sqlite.batch.events_per_s
        print(f"  PostgreSQL batch ingest {share:.0%} of SQLite's (target >= 75%): {verdict(share >= 0.75)}")
    if facts := bench.facts.get("postgres"):
        growth = facts.rates[2] / facts.rates[1]
        print(f"  PostgreSQL facts, two worker processes / one: {growth:.2f}x (target > 1): {verdict(growth > 1)}")
    for name, problem in bench.broken.items():
        print(f"\nBROKEN {name}:\n{problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="measured seconds per load (default: %(default)s)")
    parser.add_argument("--events", type=int, default=50_000, help="events of the facts phase (default: %(default)s)")
    names = [b.name for b in BACKENDS]
    parser.add_argument("--only", choices=names, action="append", help="run these backends only (repeatable)")
    args = parser.parse_args()
    chosen = [b for b in BACKENDS if args.only is None or b.name in args.only]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tune_gc()
    started = time.monotonic()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; PostgreSQL and Redis on this machine")
    with (
        tempfile.TemporaryDirectory(prefix="hw-backends-") as work,
        postgres_server(durable=True) as postgres,
        redis_server() as redis,
    ):
        bench = Bench(Path(work), args.seconds, postgres, redis)
        for backend in chosen:
            bench.phase(f"ingest on {backend.name}", bench.ingest, backend)
        facts = FactsBench(bench, args.events)
        for backend in chosen:
            if not backend.bus and backend.processes == 1:
                bench.phase(f"facts on {backend.name}", facts.run, backend)
        report(bench)
    print(f"\ntotal time {time.monotonic() - started:.0f} s, load average at the end {os.getloadavg()[0]:.2f}")
    return 1 if bench.broken else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
