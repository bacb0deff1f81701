"""The log consumer's batching: behind the log it doubles its batches up to a cap; a waiter gets
base-sized batches; a batch whose checkpoint another process moved first is not applied.
Every event is applied exactly once, in log order; one that keeps failing is skipped, and
never stops the events behind it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from headwater.config import Settings
from headwater.events import Event
from headwater.ids import new_event_ids
from headwater.processing.consumer import EVENT_ATTEMPTS, LogConsumer
from headwater.storage import open_store
from headwater.storage.base import Store, StoreError
from headwater.storage.derived import ProcessingState


async def fill(store: Store, count: int) -> int:
    now = datetime.now(UTC)
    ids = new_event_ids(count)
    events = [
        Event(ids[i], "view", f"u{i % 7}", None, None, now, now, None, msgspec.Raw(b"{}"), "t", "live")
        for i in range(count)
    ]
    for start in range(0, count, 1000):
        await store.append(events[start : start + 1000])
    return count


class Recorder:
    """A consumer that notes the offsets of every batch it applies."""

    def __init__(self, store: Store, name: str = "recorder", **kwargs: Any) -> None:
        self.batches: list[list[int]] = []

        async def prepare(events: Sequence[Event]) -> int:
            return len(events)

        def apply(state: ProcessingState, events: Sequence[Event], prepared: int, now: datetime) -> None:
            assert prepared == len(events)
            self.batches.append([e.seq or 0 for e in events])

        self.consumer: LogConsumer[int] = LogConsumer(store, name, prepare, apply, **kwargs)

    @property
    def applied(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]

    async def drain(self) -> None:
        while await self.consumer.run_once():
            pass


def run(settings: Settings, body: Any) -> Any:
    async def main() -> Any:
        store = open_store(settings)
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_backlog_is_applied_once_in_doubling_batches(settings: Settings) -> None:
    async def body(store: Store) -> None:
        total = await fill(store, 5000)
        recorder = Recorder(store, batch_size=100, max_batch_size=800)
        await recorder.drain()
        assert [len(b) for b in recorder.batches] == [100, 200, 400, *[800] * 5, 300]
        assert recorder.applied == list(range(1, total + 1))
        assert await store.process(lambda state: state.checkpoint("recorder")) == total
        # Caught up: the next batch is back to the base size.
        await fill(store, 150)
        await recorder.drain()
        assert [len(b) for b in recorder.batches[-2:]] == [100, 50]
        assert recorder.applied == list(range(1, total + 151))

    run(settings, body)


def test_a_waiter_gets_base_sized_batches(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await fill(store, 1000)
        recorder = Recorder(store, batch_size=100, max_batch_size=800)
        waiting = asyncio.create_task(recorder.consumer.wait_processed(1000, timeout=30))
        await asyncio.sleep(0)  # the waiter registers
        await recorder.drain()
        assert await waiting is True
        assert [len(b) for b in recorder.batches] == [100] * 10
        assert recorder.applied == list(range(1, 1001))

    run(settings, body)


def test_a_batch_whose_checkpoint_moved_elsewhere_is_not_applied(settings: Settings) -> None:
    async def body(store: Store) -> None:
        await fill(store, 3000)
        one = Recorder(store, "shared", batch_size=500, max_batch_size=500)
        other = Recorder(store, "shared", batch_size=500, max_batch_size=500)
        assert await one.consumer.run_once() == 500
        for _ in range(3):  # meanwhile another process applies 501-2000
            assert await other.consumer.run_once() == 500
        assert await one.consumer.run_once() == 500  # its write finds the checkpoint moved: nothing applied
        await one.drain()
        assert one.applied == [*range(1, 501), *range(2001, 3001)]
        assert other.applied == list(range(501, 2001))
        assert await store.process(lambda state: state.checkpoint("shared")) == 3000

    run(settings, body)


# One event must never stop a consumer.


async def append_events(store: Store, tenants: Sequence[str], count: int, start: int = 0) -> list[Event]:
    now = datetime.now(UTC)
    ids = new_event_ids(count)
    events = [
        Event(
            ids[i], "view", f"u{i}", None, None, now, now, None, msgspec.Raw(b"{}"), tenants[i % len(tenants)], "live"
        )
        for i in range(count)
    ]
    await store.append(events)
    return [e for e in await store.read_log(start, count) if e.seq is not None]


class Failing:
    """A consumer that raises in `prepare` or in `apply` whenever a batch holds one of the
    `failing` event ids (while `failing` holds them), and notes the events it applied."""

    def __init__(self, store: Store, failing: dict[str, Exception], where: str, **kwargs: Any) -> None:
        self.failing = failing
        self.applied: list[int] = []
        self.failed: list[int] = []  # the size of each batch that failed

        def check(events: Sequence[Event]) -> None:
            for event in events:
                if event.id in self.failing:
                    self.failed.append(len(events))
                    raise self.failing[event.id]

        async def prepare(events: Sequence[Event]) -> None:
            if where == "prepare":
                check(events)

        def apply(state: ProcessingState, events: Sequence[Event], prepared: None, now: datetime) -> None:
            if where == "apply":
                check(events)
            self.applied += [e.seq or 0 for e in events]

        self.consumer: LogConsumer[None] = LogConsumer(store, "failing", prepare, apply, poll_seconds=0.01, **kwargs)


@pytest.mark.parametrize("where", ["prepare", "apply"])
def test_an_event_that_keeps_failing_is_skipped_and_the_rest_go_on(
    settings: Settings, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: Store) -> None:
        events = await append_events(store, ["t", "u"], 1000)
        bad = events[99]
        failing = Failing(store, {bad.id: ValueError("cannot apply this one")}, where, batch_size=1000)
        task = asyncio.create_task(failing.consumer.run_forever())
        try:
            # What `?wait=processed`, 002's inline results and 003's /sync wait for.
            assert await failing.consumer.wait_processed(1000, timeout=20) is True
            assert failing.applied == [seq for seq in range(1, 1001) if seq != bad.seq]  # both tenants, in order
            # The batch, then halves down to the event alone (10 of them), then the event alone, thrice.
            assert failing.failed == [1000, 500, 250, 125, 63, 32, 16, 8, 4, 2, 1, 1, 1]
            assert await store.process(lambda state: state.checkpoint("failing")) == 1000
            later = await append_events(store, ["u"], 5, start=1000)
            assert await failing.consumer.wait_processed(1005, timeout=10) is True
            assert failing.applied[-5:] == [e.seq for e in later]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        skipped = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in skipped] == [
            f"consumer failing skips event {bad.id} (seq 100) after 3 failed attempts:"
            " ValueError('cannot apply this one')"
        ]
        assert len(failing.failed) == 10 + EVENT_ATTEMPTS  # skipped for good: never tried again

    with caplog.at_level(logging.WARNING, logger="headwater.consumer"):
        run(settings, body)


def test_an_event_whose_write_fails_in_the_database_is_retried_not_skipped(settings: Settings) -> None:
    """A full disk is the store failing, not the event: the consumer waits for it, and skips nothing."""

    async def body(store: Store) -> None:
        events = await append_events(store, ["t"], 10)
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorcode = sqlite3.SQLITE_FULL  # as sqlite3 sets it
        failing = Failing(store, {events[4].id: full}, "apply", batch_size=100)
        for _ in range(2 * EVENT_ATTEMPTS):
            with pytest.raises(StoreError, match="database or disk is full"):
                await failing.consumer.run_once()
        assert await store.process(lambda state: state.checkpoint("failing")) == 0
        assert failing.applied == []
        failing.failing.clear()  # the disk has room again
        assert await failing.consumer.run_once() == 10
        assert failing.applied == list(range(1, 11))

    run(settings, body)
