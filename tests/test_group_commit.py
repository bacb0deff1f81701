"""The SQLite log's group commit (headwater.storage.sqlite.core): appends that queued behind one
another run in one transaction, each in its savepoint, and one that fails there fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import msgspec
import pytest

from headwater.events import Event
from headwater.storage.sqlite import MAIN_FILE, open_sqlite_store
from tests.test_backpressure import event as flood_event
from tests.test_backpressure import write_lock


def event(key: str, event_id: str | None = None) -> Event:
    """An event `evt_<key>` with `key` as its idempotency key, or another id."""
    made = flood_event(key)
    return made if event_id is None else msgspec.structs.replace(made, id=event_id)


def stored(db: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return list(conn.execute("SELECT seq, idempotency_key FROM events ORDER BY seq"))


def test_an_append_that_fails_in_its_group_fails_alone_and_leaves_no_gap(tmp_path: Path) -> None:
    """Three appends queue while the writer waits for SQLite's lock, so the next group holds
    them all; the middle one's second event reuses a stored id. Its savepoint is rolled back: it
    raises, the other two are stored, and the offsets run on without a gap where its rows were
    (the writer once went on counting from the rolled-back ones)."""
    db = tmp_path / MAIN_FILE

    async def main() -> None:
        store = open_sqlite_store(tmp_path)
        await store.start()
        try:
            [taken] = await store.log.append([event("taken")])
            with write_lock(db):
                # The writer takes this one and waits on the lock; the next three queue meanwhile.
                head = asyncio.ensure_future(store.log.append([event("head")]))
                await asyncio.sleep(0.2)
                first = asyncio.ensure_future(store.log.append([event("a0"), event("a1")]))
                bad = asyncio.ensure_future(store.log.append([event("bad"), event("bad-too", taken.id)]))
                last = asyncio.ensure_future(store.log.append([event("b0"), event("b1")]))
                await asyncio.sleep(0.1)
                assert not any(task.done() for task in (head, first, bad, last))
            assert [o.status for o in await head] == ["accepted"]
            with pytest.raises(sqlite3.IntegrityError, match=r"UNIQUE constraint failed: events\.id"):
                await bad
            assert [(o.status, o.seq) for o in await first] == [("accepted", 3), ("accepted", 4)]
            assert [(o.status, o.seq) for o in await last] == [("accepted", 5), ("accepted", 6)]
        finally:
            await store.close()

    asyncio.run(main())
    assert stored(db) == [(1, "taken"), (2, "head"), (3, "a0"), (4, "a1"), (5, "b0"), (6, "b1")]


def test_appends_in_one_group_see_each_others_keys(tmp_path: Path) -> None:
    """A later append in the group finds a key an earlier one of the same transaction stored, as
    a duplicate of that event."""
    db = tmp_path / MAIN_FILE

    async def main() -> None:
        store = open_sqlite_store(tmp_path)
        await store.start()
        try:
            with write_lock(db):
                head = asyncio.ensure_future(store.log.append([event("head")]))
                await asyncio.sleep(0.2)
                first = asyncio.ensure_future(store.log.append([event("k")]))
                again = asyncio.ensure_future(store.log.append([event("k", "evt_other")]))
                await asyncio.sleep(0.1)
            await head
            [original] = await first
            [duplicate] = await again
            assert (original.status, original.id, original.seq) == ("accepted", "evt_k", 2)
            assert (duplicate.status, duplicate.id, duplicate.seq) == ("duplicate", "evt_k", 2)
        finally:
            await store.close()

    asyncio.run(main())
    assert stored(db) == [(1, "head"), (2, "k")]
