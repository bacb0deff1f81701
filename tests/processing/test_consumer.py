"""The partition consumer: behind the log it doubles its pages up to a cap; a page whose
checkpoint another worker moved first is not applied; only the events of tenants with
definitions are read; an event whose planning raises is retried, then dead-lettered and
passed over, while the events behind it (in its partition and others) go on; a dead letter
asked to be retried is applied again on its own. Every event is applied exactly once, in log
order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from headwater.config import Settings
from headwater.events import Event
from headwater.ids import new_event_ids
from headwater.processing.consumer import PartitionConsumer
from headwater.processing.definitions import Definitions, Scope, ScopeDefinitions
from headwater.storage import open_store
from headwater.storage.base import Store, StoreError
from headwater.storage.derived import StateReads
from headwater.storage.effects import Effects
from headwater.storage.records import partition_lease
from headwater.storage.registry import DefinitionKind, TriggerRecord
from headwater.storage.sqlite.derived import SqliteDerived
from tests.servers import Postgres


async def define_trigger(store: Store, tenant: str, trigger_id: str = "trg_1") -> None:
    """A trigger, so that the tenant's events are read by a consumer of triggers."""
    now = datetime.now(UTC)
    rule = {"name": "any", "event_types": ["view"], "action": {"type": "recommend", "config": {}}}
    await store.registry.put_trigger(
        TriggerRecord(trigger_id, tenant, "live", msgspec.Raw(msgspec.json.encode(rule)), now, now)
    )


async def fill(store: Store, count: int, tenant: str = "t") -> list[int]:
    """`count` events of one subject (one partition); their offsets."""
    now = datetime.now(UTC)
    ids = new_event_ids(count)
    events = [
        Event(ids[i], "view", "u", None, None, now, now, None, msgspec.Raw(b"{}"), tenant, "live") for i in range(count)
    ]
    seqs: list[int] = []
    for start in range(0, count, 1000):
        seqs += [o.seq for o in await store.log.append(events[start : start + 1000])]
    return seqs


class Recorder:
    """An engine that notes the offsets of every page it plans; `poison` offsets raise."""

    name = "recorder"
    kinds: tuple[DefinitionKind, ...] = ("triggers",)

    def __init__(self, poison: Sequence[int] = ()) -> None:
        self.batches: list[list[int]] = []
        self.poison = set(poison)
        self.tries: dict[int, int] = {}

    async def plan(
        self,
        events: Sequence[Event],
        scopes: dict[Scope, ScopeDefinitions],
        state: StateReads,
        now: datetime | None,
        retry: bool = False,
    ) -> Effects:
        seqs = [e.seq or 0 for e in events]
        for seq in seqs:
            if seq in self.poison:
                self.tries[seq] = self.tries.get(seq, 0) + 1
                raise ValueError(f"poison at {seq}")
        self.batches.append(seqs)
        return Effects()

    @property
    def applied(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]


def consumer(store: Store, engine: Recorder, partition: int, **kwargs: Any) -> PartitionConsumer:
    return PartitionConsumer(store, Definitions(store.registry), engine, partition, **kwargs)


async def drain(c: PartitionConsumer) -> None:
    while await c.run_once():
        pass


def run(settings: Settings, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(settings)
        await store.start()
        try:
            await define_trigger(store, "t")
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def partition_of_u(store: Store) -> int:
    from headwater.partitions import partition_of

    return partition_of("t", "live", "u", store.log.partitions)


def test_a_backlog_is_applied_once_in_doubling_pages(settings: Settings) -> None:
    async def body(store: Store) -> None:
        seqs = await fill(store, 5000)
        p = partition_of_u(store)
        engine = Recorder()
        c = consumer(store, engine, p, batch_size=100, max_batch_size=800)
        await drain(c)
        assert [len(b) for b in engine.batches] == [100, 200, 400, *[800] * 5, 300]
        assert engine.applied == seqs
        assert await store.derived.checkpoint("recorder", p) == seqs[-1]
        # Caught up: the next page is back to the base size.
        more = await fill(store, 150)
        await drain(c)
        assert [len(b) for b in engine.batches[-2:]] == [100, 50]
        assert engine.applied == seqs + more

    run(settings, body)


def test_a_page_whose_checkpoint_moved_elsewhere_is_not_applied(settings: Settings) -> None:
    async def body(store: Store) -> None:
        seqs = await fill(store, 3000)
        p = partition_of_u(store)
        first, second = Recorder(), Recorder()
        one = consumer(store, first, p, batch_size=500, max_batch_size=500)
        other = consumer(store, second, p, batch_size=500, max_batch_size=500)
        assert await one.run_once() == 500
        for _ in range(3):  # meanwhile another worker applies the next 1,500
            assert await other.run_once() == 500
        assert await one.run_once() == 500  # planned, but its write finds the checkpoint moved: nothing applied
        await drain(one)
        assert await store.derived.checkpoint("recorder", p) == seqs[-1]
        # What `one` wrote is what it planned after its refused page: 1-500, then 2001-3000.
        refused = first.batches[1]
        assert refused == seqs[500:1000]
        assert [s for b in first.batches if b != refused for s in b] == seqs[:500] + seqs[2000:]
        assert second.applied == seqs[500:2000]

    run(settings, body)


def test_events_of_tenants_without_definitions_are_not_read(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await fill(store, 300, tenant="nobody")  # no trigger: passed over unread
        mine = await fill(store, 20)
        p = partition_of_u(store)
        engine = Recorder()
        c = consumer(store, engine, p)
        await drain(c)
        from headwater.partitions import partition_of

        if partition_of("nobody", "live", "u", store.log.partitions) == p:
            assert engine.applied == mine
        assert await store.derived.checkpoint("recorder", p) == mine[-1]

    run(settings, body)


def test_a_poison_event_is_dead_lettered_and_the_rest_go_on(settings: Settings) -> None:
    async def body(store: Store) -> None:
        seqs = await fill(store, 10)
        p = partition_of_u(store)
        engine = Recorder(poison=[seqs[3]])
        c = consumer(store, engine, p, attempts=3)
        await drain(c)
        assert engine.applied == [s for s in seqs if s != seqs[3]]
        # The page, its halves down to the event (10, 5, 3, 2), then the event alone, thrice.
        assert engine.tries == {seqs[3]: 7}
        assert engine.batches == [seqs[:2], [seqs[2]], [seqs[4]], seqs[5:]]
        assert await store.derived.checkpoint("recorder", p) == seqs[-1]
        [(_, dead)] = await store.derived.list_dead_letters("t", "live")
        assert (dead.consumer, dead.partition, dead.seq, dead.event_type, dead.attempts, dead.status) == (
            "recorder", p, seqs[3], "view", 3, "dead",
        )  # fmt: skip
        assert dead.error == f"ValueError: poison at {seqs[3]}"
        # Asked to retry: still poison, so dead again, one attempt on.
        assert await store.derived.retry_dead_letter("t", "live", dead.id, datetime.now(UTC))
        [retrying] = await store.derived.retrying([p])
        assert retrying.status == "retrying"
        assert await c.retry(retrying) is False
        [(_, again)] = await store.derived.list_dead_letters("t", "live")
        assert (again.status, again.attempts) == ("dead", 4)
        # Fixed, and retried: applied on its own, and resolved.
        engine.poison.clear()
        assert await store.derived.retry_dead_letter("t", "live", dead.id, datetime.now(UTC))
        assert await c.retry((await store.derived.retrying([p]))[0]) is True
        assert engine.batches[-1] == [seqs[3]]
        [(_, resolved)] = await store.derived.list_dead_letters("t", "live")
        assert (resolved.status, resolved.attempts) == ("resolved", 4)
        assert await store.derived.retrying([p]) == []

    run(settings, body)


def test_a_write_refused_for_a_lease_held_elsewhere_applies_nothing(settings: Settings) -> None:
    async def body(store: Store) -> None:
        seqs = await fill(store, 10)
        p = partition_of_u(store)
        now = datetime.now(UTC)
        lease = partition_lease(p)
        assert await store.derived.take_leases("other", [lease], now, now.replace(year=now.year + 1)) == [lease]
        engine = Recorder()
        c = consumer(store, engine, p, owner="me", lease=lease)
        await c.run_once()
        assert engine.applied == seqs  # planned
        assert await store.derived.checkpoint("recorder", p) == 0  # but not written

    run(settings, body)


def test_a_store_that_cannot_write_is_retried_and_nothing_is_dead_lettered(sqlite_settings: Settings) -> None:
    """A full disk is the store failing, not an event: the consumer raises `StoreError` (its
    worker waits and tries again), dead-letters nothing, and goes on once there is room.

    SQLite's alone: a page cap on its file is how it fills a disk here (PostgreSQL's own way of
    failing writes is the test after this one)."""

    async def body(store: Store) -> None:
        seqs = await fill(store, 10)
        p = partition_of_u(store)

        class Heavy(Recorder):
            async def plan(self, events: Sequence[Event], *args: Any, **kwargs: Any) -> Effects:
                await super().plan(events, *args, **kwargs)
                return Effects(fact_effects=[(f"fact_{e.id}", b"x" * 100_000) for e in events])

        engine = Heavy()
        c = consumer(store, engine, p)
        assert isinstance(store.derived, SqliteDerived)  # SQLite's own way to fill a disk: a page cap
        derived = store.derived.parts[p]
        pages = (await derived.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()))[0]
        await derived.write(lambda tx: tx.conn.execute(f"PRAGMA max_page_count = {pages + 5}"))
        for _ in range(3):
            with pytest.raises(StoreError, match="full"):
                await c.run_once()
        assert await store.derived.checkpoint("recorder", p) == 0
        assert await store.derived.list_dead_letters("t", "live") == []
        await derived.write(lambda tx: tx.conn.execute("PRAGMA max_page_count = 1073741823"))  # room again
        await drain(c)
        assert await store.derived.checkpoint("recorder", p) == seqs[-1]
        assert await store.derived.list_dead_letters("t", "live") == []

    run(sqlite_settings, body)


@pytest.fixture
def postgres_settings(postgres: Postgres, tmp_path: Path) -> Iterator[Settings]:
    """A database of the test's own on the session's PostgreSQL."""
    database = postgres.new_database()
    try:
        yield replace(Settings(), data_dir=tmp_path / "data", store=postgres.url(database))
    finally:
        postgres.drop_database(database)


async def read_only(url: str, on: bool) -> None:
    """The database refuses every write (as a primary demoted to a standby does), or accepts
    them again: the setting holds for new sessions, so every session of it is ended (and waited
    for), and the caller's loop is given the time to see its connections closed."""
    database = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = {'on' if on else 'off'}")
        await conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1", database)
    finally:
        await conn.close()
    await asyncio.sleep(0.1)


def test_a_postgres_that_cannot_write_is_retried_and_nothing_is_dead_lettered(postgres_settings: Settings) -> None:
    """A PostgreSQL that refuses every write (its database made read-only, as a primary demoted
    to a standby is) is the store failing, not an event: the consumer raises `StoreError` each
    time, dead-letters nothing, and goes on once it can write.

    PostgreSQL's alone: the test before fails SQLite's writes its own way (a page cap)."""
    url = postgres_settings.store
    assert url is not None

    async def body(store: Store) -> None:
        seqs = await fill(store, 10)
        p = partition_of_u(store)
        engine = Recorder()
        c = consumer(store, engine, p)
        await read_only(url, True)
        for _ in range(4):  # as often as it is tried: never taken for a poison event
            with pytest.raises(StoreError):
                await c.run_once()
        assert await store.derived.checkpoint("recorder", p) == 0
        assert await store.derived.list_dead_letters("t", "live") == []
        await read_only(url, False)
        await drain(c)
        assert await store.derived.checkpoint("recorder", p) == seqs[-1]
        assert await store.derived.list_dead_letters("t", "live") == []
        assert engine.applied[-10:] == seqs

    run(postgres_settings, body)


def test_refreshes_asked_together_share_one_read_and_none_misses_an_earlier_change(settings: Settings) -> None:
    """A worker's consumers wake together and refresh the one cache: one read of the version
    serves them all. A refresh asked while a read is under way reads again, so a change
    committed before it asked is in force for it."""

    async def body(store: Store) -> None:
        reads: list[int] = []
        real = store.registry.definitions_version
        hold = asyncio.Event()

        async def counted() -> int:
            reads.append(1)
            version = await real()
            if len(reads) == 2:
                await hold.wait()  # a read that began before the change and ends after it
            return version

        store.registry.definitions_version = counted  # type: ignore[method-assign]
        definitions = Definitions(store.registry)
        assert await asyncio.gather(*(definitions.refresh() for _ in range(16))) == [True] + [False] * 15
        assert len(reads) == 1
        assert await definitions.scopes_with("triggers") == frozenset({("t", "live")})
        slow = asyncio.ensure_future(definitions.refresh())
        while len(reads) < 2:
            await asyncio.sleep(0.001)
        await define_trigger(store, "u", "trg_2")
        assert await definitions.refresh() is True  # a read of its own, after the trigger
        assert len(reads) == 3
        assert await definitions.scopes_with("triggers") == frozenset({("t", "live"), ("u", "live")})
        hold.set()
        assert await slow is False  # an older version changes nothing
        assert await definitions.scopes_with("triggers") == frozenset({("t", "live"), ("u", "live")})

    run(settings, body)
