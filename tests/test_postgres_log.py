"""The PostgreSQL log on its own, with two `PgLog`s over one database standing for two API
processes (two pools): an append that commits late is never skipped by a consumer that
checkpoints at each page's `end` (nothing read twice either), because offsets are assigned
under one sequencer and so become visible in commit order; concurrent appends of both are
numbered without gaps; dedup is exact across them; one request's failing items do not fail the
others of its group; a full queue refuses; and what is read back is what the SQLite log
returns for the same appends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from headwater.events import Event, EventDraft, FieldError, QuarantinedEvent
from headwater.ids import new_event_id
from headwater.partitions import partition_of
from headwater.storage.base import Backpressure
from headwater.storage.log import AppendOutcome, EventLog, EventQuery, QuarantineQuery, Refused
from headwater.storage.postgres.core import PgCore
from headwater.storage.postgres.log import SEQUENCER_LOCK, PgLog
from headwater.storage.sqlite import open_sqlite_store
from tests.servers import Postgres

PARTITIONS = 4


@pytest.fixture
def url(postgres: Postgres) -> Iterator[str]:
    database = postgres.new_database()
    try:
        yield postgres.url(database)
    finally:
        postgres.drop_database(database)


@contextlib.asynccontextmanager
async def opened(url: str, queue_max_events: int = 200_000) -> AsyncIterator[PgLog]:
    """A log on a pool of its own: another API process."""
    core = PgCore(url, pool_size=4, partitions=PARTITIONS)
    log = PgLog(core, queue_max_events=queue_max_events)
    await core.start()
    await log.start()
    try:
        yield log
    finally:
        await log.close()
        await core.close()


def event(
    key: str | None = None, subject: str | None = None, *, tenant: str = "t", type_: str = "view", **fields: Any
) -> Event:
    now = fields.pop("received_at", datetime.now(UTC))
    values: dict[str, Any] = {
        "id": new_event_id(),
        "type": type_,
        "subject": subject,
        "source": None,
        "channel": None,
        "time": now,
        "received_at": now,
        "idempotency_key": key,
        "data": msgspec.Raw(b"{}"),
        "tenant": tenant,
        "mode": "live",
        **fields,
    }
    return Event(**values)


def batch(name: str, count: int) -> list[Event]:
    return [event(f"{name}-{i}", subject=f"{name}-{i}") for i in range(count)]


class Gate:
    """Holds one append's transaction open at `point` (see `PgLog.pause`) until released, and
    at the latest when the block ends (a failed assertion must not leave a writer stuck)."""

    def __init__(self, log: PgLog, point: str) -> None:
        self.log = log
        self.point = point
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __aenter__(self) -> Gate:
        self.log.pause = self.pause
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()

    async def pause(self, point: str) -> None:
        if point == self.point and not self.reached.is_set():
            self.reached.set()
            await self.release.wait()


class Follower:
    """A consumer of every partition that checkpoints at each page's `end`, and a reader of the
    whole log that goes on from the last offset it read."""

    def __init__(self, log: EventLog, limit: int = 7) -> None:
        self.log = log
        self.limit = limit
        self.checkpoints = dict.fromkeys(range(log.partitions), 0)
        self.consumed: list[Event] = []
        self.position = 0
        self.read: list[Event] = []

    async def catch_up(self) -> None:
        for partition, checkpoint in self.checkpoints.items():
            while True:
                page = await self.log.read_partition(partition, checkpoint, self.limit)
                assert page.end >= checkpoint
                assert all(checkpoint < (e.seq or 0) <= page.end for e in page.events)
                self.consumed += page.events
                if page.end == checkpoint:
                    break
                checkpoint = self.checkpoints[partition] = page.end
        while events := await self.log.read_log(self.position, self.limit):
            # Gapless: no offset below one that is visible can still commit.
            assert [e.seq for e in events] == list(range(self.position + 1, self.position + 1 + len(events)))
            self.read += events
            self.position = events[-1].seq or 0
        assert await self.log.head() >= self.position


def _partition(e: Event) -> int:
    return partition_of(e.tenant, e.mode, e.subject, PARTITIONS)


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


async def sequencer_waiters(log: PgLog) -> int:
    """How many transactions wait for the sequencer's lock (a bigint key: its low half is objid)."""
    return int(
        await log.core.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = $1",
            SEQUENCER_LOCK,
        )
    )


def test_an_append_that_began_first_and_commits_late_is_not_skipped(url: str) -> None:
    """An append whose transaction began first and commits after another's: it takes its
    offsets only once it has the sequencer, so above the other's, which a reader has passed."""

    async def main() -> None:
        async with opened(url) as a, opened(url) as b:
            follower = Follower(b)
            async with Gate(a, "begun") as gate:
                late_events = batch("late", 5)
                late = asyncio.create_task(a.append(late_events))
                await gate.reached.wait()  # a's transaction is open

                early_events = batch("early", 5)
                early = await b.append(early_events)  # commits meanwhile
                assert [o.seq for o in early] == [1, 2, 3, 4, 5]
                await follower.catch_up()
                assert sorted(ids(follower.consumed)) == sorted(ids(early_events))
                assert ids(follower.read) == ids(early_events)
                assert await b.head() == 5

                gate.release.set()
                assert [o.seq for o in await late] == [6, 7, 8, 9, 10]
                await follower.catch_up()
                assert sorted(ids(follower.consumed)) == sorted(ids(early_events + late_events))
                assert ids(follower.read) == ids(early_events + late_events)

    asyncio.run(main())


def test_an_append_holding_its_offsets_uncommitted_holds_back_later_ones(url: str) -> None:
    """The case a bigserial gets wrong: an append that has taken its offsets but not committed.
    It holds the sequencer, so another process's append waits for it (rather than commit higher
    offsets that a reader would pass); readers see neither meanwhile, then both, in order."""

    async def main() -> None:
        async with opened(url) as a, opened(url) as b, opened(url) as reader:
            follower = Follower(reader)
            await b.append(batch("before", 3))
            await follower.catch_up()
            async with Gate(a, "numbered") as gate:
                first_events = batch("first", 4)
                first = asyncio.create_task(a.append(first_events))
                await gate.reached.wait()  # offsets 4..7 are taken, not committed

                second_events = batch("second", 4)
                second = asyncio.create_task(b.append(second_events))
                for _ in range(500):
                    if await sequencer_waiters(reader) or second.done():
                        break
                    await asyncio.sleep(0.01)
                assert not second.done(), "an append committed while another held offsets below its own"
                assert await sequencer_waiters(reader) == 1
                await follower.catch_up()
                assert len(follower.consumed) == len(follower.read) == 3
                assert await reader.head() == 3
                heads: dict[int, int] = {}
                for e in follower.read:
                    heads[_partition(e)] = e.seq or 0
                assert await reader.partition_heads() == heads
                assert not second.done()

                gate.release.set()
                assert [o.seq for o in await first] == [4, 5, 6, 7]
                assert [o.seq for o in await second] == [8, 9, 10, 11]
                await follower.catch_up()
                expected = ids(follower.read[:3]) + ids(first_events) + ids(second_events)
                assert ids(follower.read) == expected
                assert sorted(ids(follower.consumed)) == sorted(expected)  # each exactly once
                assert sum([await reader.count_after(p, 0) for p in range(PARTITIONS)]) == 11

    asyncio.run(main())


def test_concurrent_appends_of_two_processes_are_numbered_in_commit_order(url: str) -> None:
    """Many appends from two pools at once, and a follower reading as they commit: offsets
    1..n without a gap at any moment it looks, and it gets every event exactly once."""

    async def main() -> None:
        async with opened(url) as a, opened(url) as b:
            follower = Follower(a, limit=50)
            writing = True
            outcomes: dict[str, list[AppendOutcome]] = {"a": [], "b": []}
            sent: list[Event] = []

            async def follow() -> None:
                while writing:
                    await follower.catch_up()
                    await asyncio.sleep(0)

            async def write(name: str, log: PgLog, writer: int) -> None:
                for i in range(25):
                    events = [event(f"{name}{writer}-{i}-{j}", subject=f"u{j % 7}") for j in range(1 + i % 4)]
                    sent.extend(events)
                    outcomes[name] += await log.append(events)

            reading = asyncio.create_task(follow())
            await asyncio.gather(*(write(name, log, w) for w in range(12) for name, log in (("a", a), ("b", b))))
            writing = False
            await reading
            await follower.catch_up()

            every = outcomes["a"] + outcomes["b"]
            assert all(o.status == "accepted" for o in every)
            assert sorted(o.seq or 0 for o in every) == list(range(1, len(sent) + 1))
            by_a = sorted(o.seq or 0 for o in outcomes["a"])
            by_b = sorted(o.seq or 0 for o in outcomes["b"])
            assert by_a[0] < by_b[-1] and by_b[0] < by_a[-1]  # the two really interleaved
            assert len(follower.consumed) == len(sent)
            assert sorted(ids(follower.consumed)) == sorted(ids(sent))
            assert [e.seq for e in follower.read] == list(range(1, len(sent) + 1))
            stored = {o.id: o.partition for o in every}
            assert all(stored[e.id] == _partition(e) for e in sent)

    asyncio.run(main())


def test_dedup_is_exact_across_processes_and_within_a_call(url: str) -> None:
    async def main() -> None:
        async with opened(url) as a, opened(url) as b:
            keys = [f"k{i}" for i in range(40)]
            calls = [log.append([event(k, subject=k) for k in keys[i::4]]) for i in range(4) for log in (a, b)]
            results = await asyncio.gather(*calls)
            outcomes = [o for result in results for o in result]
            accepted = {o.id: o for o in outcomes if o.status == "accepted"}
            assert len(accepted) == len(keys)
            assert all(o.status == "duplicate" and o.id in accepted and accepted[o.id] == o._replace(status="accepted")
                       for o in outcomes if o.status != "accepted")  # fmt: skip
            sent_keys = [k for i in range(4) for _ in (a, b) for k in keys[i::4]]
            by_key = dict(zip(sent_keys, outcomes, strict=True))
            k0, k1 = by_key["k0"]._replace(status="duplicate"), by_key["k1"]._replace(status="duplicate")

            assert await a.append([event("k0")]) == [k0]
            item = QuarantinedEvent(
                "qua_1", "t", "live", "native", "view", datetime.now(UTC), [FieldError("data", "x", "bad")], "{}"
            )
            fresh = event("new", subject="s")
            got = await b.append(
                [fresh, event("new"), Refused("t", "live", "new", None), Refused("t", "live", "k1", item),
                 Refused("t", "live", "gone", item), Refused("t", "live", k0.id or "", None),
                 Refused("t", "live", fresh.id, None)]
            )  # fmt: skip
            new = AppendOutcome("accepted", fresh.id, got[0].seq, _partition(fresh))
            refused = AppendOutcome("refused", None, None, None)
            # A key shaped like an event id names a stored event (not one of the same call).
            assert got == [new, new._replace(status="duplicate"), new._replace(status="duplicate"), k1, refused, k0,
                           refused]  # fmt: skip
            assert [q.id for q in await a.list_quarantine(QuarantineQuery("t", "live"))] == ["qua_1"]

    asyncio.run(main())


def test_a_request_that_fails_its_group_fails_alone(url: str) -> None:
    async def main() -> None:
        async with opened(url) as log:
            [taken] = await log.append([event("taken")])
            assert taken.id is not None
            async with Gate(log, "begun") as gate:
                head_of_queue = asyncio.create_task(log.append([event("first")]))
                await gate.reached.wait()
                # Queued while the writer is busy: the next group is these three together.
                good = [asyncio.create_task(log.append(batch("good0", 3)))]
                bad = asyncio.create_task(log.append([event("bad"), event("bad-too", id=taken.id)]))
                good.append(asyncio.create_task(log.append(batch("good1", 3))))
                await asyncio.sleep(0.05)
                gate.release.set()
                assert (await head_of_queue)[0].status == "accepted"
                with pytest.raises(asyncpg.UniqueViolationError):
                    await bad
                for task in good:
                    assert [o.status for o in await task] == ["accepted"] * 3
                stored = await log.read_log(0, 100)
                assert [e.seq for e in stored] == list(range(1, 9))
                assert "bad" not in {e.idempotency_key for e in stored}

    asyncio.run(main())


def test_a_full_queue_refuses_and_an_oversized_job_enters_an_empty_queue(url: str) -> None:
    async def main() -> None:
        async with opened(url, queue_max_events=10) as log, Gate(log, "begun") as gate:
            first = asyncio.create_task(log.append(batch("a", 25)))
            await gate.reached.wait()  # the writer took it: the queue is empty
            big = asyncio.create_task(log.append(batch("b", 25)))
            await asyncio.sleep(0)
            for n in range(3):
                with pytest.raises(Backpressure):
                    await asyncio.wait_for(log.append([event(f"c{n}")]), 2)
            gate.release.set()
            assert [o.status for o in await first + await big] == ["accepted"] * 50
            assert [o.status for o in await log.append([event("after")])] == ["accepted"]
            assert await log.head() == 51

    asyncio.run(main())


def test_a_quiet_tenant_is_admitted_and_served_next_despite_a_backlog(url: str) -> None:
    """As tests/test_fairness.py shows for SQLite: the loud tenant's batches beyond the queue's
    limit are refused, the quiet tenant's event is admitted and committed in the first group
    after the stall, alone, ahead of the loud batches queued before it."""
    size = 100

    async def main() -> None:
        async with opened(url, queue_max_events=8 * size) as log, Gate(log, "begun") as gate:
            done: list[str] = []
            stalled = asyncio.create_task(log.append([event("stalled")]))
            await gate.reached.wait()
            loud = {}
            for n in range(12):
                loud[n] = asyncio.create_task(log.append([event(f"l{n}-{i}", tenant="loud") for i in range(size)]))
                loud[n].add_done_callback(lambda _, n=n: done.append(f"loud{n}"))
                await asyncio.sleep(0)
            quiet = asyncio.create_task(log.append([event("quiet", tenant="quiet")]))
            quiet.add_done_callback(lambda _: done.append("quiet"))
            await asyncio.sleep(0.1)
            refused = [f"loud{n}" for n, t in loud.items() if t.done() and isinstance(t.exception(), Backpressure)]
            assert refused == [f"loud{n}" for n in range(8, 12)]
            assert not quiet.done()
            gate.release.set()
            await asyncio.gather(stalled, quiet, *loud.values(), return_exceptions=True)
            assert [o.status for o in quiet.result()] == ["accepted"]
            assert done == [*refused, "quiet", *(f"loud{n}" for n in range(8))]  # in a group of its own
            assert await log.head() == 2 + 8 * size

    asyncio.run(main())


def test_reads_match_the_sqlite_log(url: str, tmp_path: Path) -> None:
    """The same appends on both backends read back equal: datetimes (in UTC, to the
    microsecond), data byte for byte, NULs in strings, violations, pages, quarantine."""
    base = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    events = [
        event("k1", "s1", time=base.astimezone(plus2), received_at=base, data=msgspec.Raw(b'{ "a" : [1, 2.50] }')),
        event(None, "s\x00", type_="a\x00b", source="src", channel="c", received_at=base + timedelta(seconds=1)),
        event("k2", "s1", type_="other", violations=[FieldError("data.x", "type", "must be a string")]),
        event(
            None, None, time=base - timedelta(days=400), received_at=base, data=msgspec.Raw(b'{"\\u0000":"\xc3\xa9"}')
        ),
        *[event(None, f"u{i}", time=base + timedelta(microseconds=i), received_at=base) for i in range(30)],
    ]
    draft = EventDraft("view", time=base, data=msgspec.Raw(b'{"n": 1}'))
    item = QuarantinedEvent("qua_2", "t", "live", "native", "v\x00", base, [FieldError("d", "c", "m")], "r\x00", draft)
    other = QuarantinedEvent("qua_1", "t", "live", "segment", None, base, [FieldError("d", "c", "m")], None)
    queries = [
        EventQuery("t", "live"),
        EventQuery("t", "live", types=("view", "other"), limit=5),
        EventQuery("t", "live", subject="s1"),
        EventQuery("t", "live", subject="s\x00", types=("a\x00b",)),
        EventQuery("t", "live", source="src"),
        EventQuery("t", "live", time_from=base, time_to=base + timedelta(microseconds=10), limit=4),
        EventQuery("t", "live", before=(base + timedelta(microseconds=12), 20), limit=3),
        EventQuery("t", "live", processed={0: 10, 2: 30}),
        EventQuery("t", "live", processed={}),
    ]

    async def read(log: EventLog) -> list[Any]:
        outcomes = await log.append([*events, Refused("t", "live", "k1", None)], [item, other])
        outcomes += await log.append([Refused("t", "live", "k9", None)])
        await log.mark_replayed("t", "live", [("qua_1", events[0].id)], base)
        await log.update_quarantine_reasons("t", "live", [("qua_2", [FieldError("x", "y", "z")])])
        pages = [await log.read_partition(p, 0, 5, s) for p in range(PARTITIONS) for s in (None, frozenset())]
        pages += [await log.read_partition(p, 3, 100, frozenset({("t", "live")})) for p in range(PARTITIONS)]
        return [
            outcomes,
            await log.read_log(0, 100),
            await log.read_log(5, 3),
            # SQLite reads `flagged` as 0 or 1.
            [s._replace(flagged=bool(s.flagged)) for s in await log.read_summaries(0, 100, 3)],
            await log.get_event("t", "live", events[1].id),
            await log.get_event("t", "test", events[1].id),
            await log.get_events([7, 2, 2, 40, 1]),
            [await log.query_events(q) for q in queries],
            pages,
            await log.head(),
            await log.partition_heads(),
            [await log.count_after(p, 4) for p in range(PARTITIONS)],
            await log.list_quarantine(QuarantineQuery("t", "live", status=None)),
            await log.list_quarantine(QuarantineQuery("t", "live", before="qua_2")),
            await log.list_quarantine(QuarantineQuery("t", "live", status="replayed", type="view")),
            await log.list_quarantine(QuarantineQuery("t", "live", ids=("qua_1", "qua_2", "x\x00"), status=None)),
        ]

    async def main() -> None:
        sqlite = open_sqlite_store(tmp_path, partitions=PARTITIONS)
        await sqlite.start()
        try:
            expected = await read(sqlite.log)
        finally:
            await sqlite.close()
        async with opened(url) as log:
            got = await read(log)
        assert msgspec.json.encode(got) == msgspec.json.encode(expected)
        assert got == expected
        assert all(e.time.tzinfo is UTC for e in got[1])

    asyncio.run(main())
