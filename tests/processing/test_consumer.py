"""The log consumer's batching: behind the log it doubles its batches up to a cap; a waiter gets
base-sized batches; a batch whose checkpoint another process moved first is not applied.
Every event is applied exactly once, in log order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater.config import Settings
from headwater.events import Event
from headwater.ids import new_event_ids
from headwater.processing.consumer import LogConsumer
from headwater.storage import open_store
from headwater.storage.base import Store
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
