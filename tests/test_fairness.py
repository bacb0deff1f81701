"""The writer is fair between tenants: a backlog of one tenant's batches neither makes another
tenant's small request wait behind all of it nor gets that request refused.

The SQLite writer is stalled deterministically, as in test_backpressure.py: another connection
holds the write lock while the jobs pile up. The PostgreSQL writer's version of this test is in
test_postgres_log.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from headwater.events import Event
from headwater.storage.base import Backpressure
from headwater.storage.lanes import SMALL_JOB, Lanes
from headwater.storage.sqlite import MAIN_FILE, open_sqlite_store
from headwater.storage.sqlite.log import LOG_GROUP_EVENTS
from tests.test_backpressure import event as backpressure_event
from tests.test_backpressure import stored_keys, write_lock


def test_lanes_take_from_each_tenant_in_turn_up_to_the_group_size() -> None:
    lanes: Lanes[str] = Lanes(limit=1000)
    for n in range(4):
        lanes.put("loud", f"loud{n}", 10)
    lanes.put("quiet", "quiet0", 1)
    lanes.put("quiet", "quiet1", 1)
    lanes.put(None, "lease", 1, first=True)
    assert lanes.take(max_size=12) == ["lease", "loud0", "quiet0"]
    assert lanes.pending == 31
    # This group starts with the lane after the one the last began with.
    assert lanes.take(max_size=12) == ["quiet1", "loud1"]
    assert lanes.take(max_size=None) == ["loud2", "loud3"]
    assert not lanes and lanes.pending == 0


def test_small_jobs_go_first_in_a_group_of_their_own_then_the_large_ones_get_theirs() -> None:
    lanes: Lanes[str] = Lanes(limit=100_000)
    for n in range(3):
        lanes.put("loud", f"batch{n}", 1000)
    lanes.put("quiet", "q0", 1)
    lanes.put("quiet", "q1", SMALL_JOB)
    lanes.put("other", "o0", 2)
    assert lanes.take(max_size=2000) == ["q0", "o0", "q1"]
    lanes.put("quiet", "q2", 1)
    # A group passed the batches over: the next takes every lane in turn, small jobs too.
    assert lanes.take(max_size=2000) == ["batch0", "q2"]
    lanes.put("quiet", "q3", 1)
    assert lanes.take(max_size=2000) == ["q3"]
    assert lanes.take(max_size=2000) == ["batch1", "batch2"]
    assert not lanes and lanes.pending == 0


def test_a_stream_of_small_jobs_never_holds_a_large_one_back() -> None:
    lanes: Lanes[str] = Lanes(limit=100_000)
    lanes.put("loud", "batch", 1000)
    taken: list[list[str]] = []
    for n in range(3):
        lanes.put("quiet", f"q{n}", 1)
        taken.append(lanes.take(max_size=2000))
    assert taken == [["q0"], ["batch", "q1"], ["q2"]]


def test_a_job_that_does_not_fit_lets_a_smaller_one_of_another_lane_in() -> None:
    lanes: Lanes[str] = Lanes(limit=10_000)
    lanes.put("a", "a0", 10)
    lanes.put("b", "b0", 1_000)
    lanes.put("c", "c0", 5)
    assert lanes.take(max_size=100) == ["a0", "c0"]
    assert lanes.take(max_size=100) == ["b0"]  # alone, a job of any size is taken


def test_a_full_queue_refuses_the_lane_over_its_share_only() -> None:
    lanes: Lanes[str] = Lanes(limit=100)
    assert lanes.admits("loud", 500)  # an empty queue takes any job
    lanes.put("loud", "big", 500)
    assert not lanes.admits("loud", 1)
    assert lanes.admits("quiet", 50)  # half of the limit: two lanes would be waiting
    assert not lanes.admits("quiet", 51)
    lanes.put("quiet", "q", 50)
    assert not lanes.admits("quiet", 1)
    assert lanes.admits("third", 33) and not lanes.admits("third", 34)


def _refused(job: asyncio.Future[object]) -> bool:
    return isinstance(job.exception(), Backpressure)


def event(key: str, tenant: str) -> Event:
    return msgspec.structs.replace(backpressure_event(key), tenant=tenant)


def test_a_quiet_tenant_is_admitted_and_served_next_despite_a_backlog(tmp_path: Path) -> None:
    """The loud tenant fills the queue with batches and the rest of its batches are refused;
    the quiet tenant's single event is admitted, and committed in the first group after the
    stall, alone, ahead of the loud batches queued before it."""
    batch = LOG_GROUP_EVENTS // 2
    queue_max = 8 * batch

    async def main() -> tuple[list[str], list[str], dict[str, str]]:
        store = open_sqlite_store(tmp_path, queue_max_events=queue_max)
        await store.start()
        done: list[str] = []
        try:
            await store.log.append([event("warm", "t")])
            with write_lock(tmp_path / MAIN_FILE):
                stalled = asyncio.ensure_future(store.log.append([event("stalled", "t")]))
                await asyncio.sleep(0.2)  # the writer took it and waits for the lock
                loud = {}
                for n in range(12):
                    job = asyncio.ensure_future(store.log.append([event(f"l{n}-{i}", "loud") for i in range(batch)]))
                    job.add_done_callback(lambda _, n=n: done.append(f"loud{n}"))
                    loud[n] = job
                    await asyncio.sleep(0)  # queued, or refused, before the next
                quiet = asyncio.ensure_future(store.log.append([event("quiet", "quiet")]))
                quiet.add_done_callback(lambda _: done.append("quiet"))
                await asyncio.sleep(0.1)
                refused = [
                    f"loud{n}" for n, job in loud.items() if job.done() and isinstance(job.exception(), Backpressure)
                ]
                assert not quiet.done() and not stalled.done()
            await asyncio.gather(stalled, quiet, *loud.values(), return_exceptions=True)
            assert quiet.exception() is None
            return done, refused, stored_keys(tmp_path / MAIN_FILE)
        finally:
            await store.close()

    done, refused, on_disk = asyncio.run(main())
    assert refused == [f"loud{n}" for n in range(8, 12)]  # over the queue's limit, and the whole queue theirs
    assert done[: len(refused)] == refused
    # Then: the quiet event in a group of its own, ahead of every loud batch.
    assert done[len(refused) :] == ["quiet", *(f"loud{n}" for n in range(8))]
    assert len(on_disk) == 3 + 8 * batch and "quiet" in on_disk
