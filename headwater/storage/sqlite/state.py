"""The bulk reads engines make before they plan a batch, on a SQLite connection.

Each kind of state is one query per batch (in chunks of a few thousand keys): the keys go
in as a `VALUES` list joined against the table's primary key or index, so a batch that
touches 30,000 rows costs a handful of statements, not 30,000.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from headwater.clock import from_us
from headwater.events import Mode
from headwater.storage.effects import WindowPoint
from headwater.storage.records import Completion, ProgressRange, ProgressValue
from headwater.storage.sqlite.derived_schema import COMPLETION_COLUMNS, challenge_nums

CHUNK = 2000
ScopedSubject = tuple[str, Mode, str]


def joined(conn: sqlite3.Connection, columns: str, keys: Sequence[tuple[Any, ...]], select: str) -> list[Any]:
    """Run `select` against a `wanted(<columns>)` CTE holding `keys`, in chunks."""
    if not keys:
        return []
    width = len(keys[0])
    marks = "(" + ",".join("?" * width) + ")"
    found: list[Any] = []
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        sql = f"WITH wanted({columns}) AS (VALUES {','.join([marks] * len(chunk))}) {select}"
        found.extend(conn.execute(sql, [x for key in chunk for x in key]))
    return found


def _numbered(conn: sqlite3.Connection, ranges: Sequence[ProgressRange]) -> list[tuple[Any, ...]]:
    """Ranges with the challenge's progress number; a challenge without one has no rows."""
    nums = challenge_nums(conn, (r[0] for r in ranges), create=False)
    return [(c, nums[c], p, low, high) for c, p, low, high in ranges if c in nums]


def window_points(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> list[WindowPoint]:
    rows = joined(
        conn,
        "trigger_id, subject",
        sorted(set(pairs)),
        "SELECT w.trigger_id, w.subject, t.event_id, t.time, t.value FROM wanted w"
        " JOIN trigger_windows t ON t.trigger_id = w.trigger_id AND t.subject = w.subject",
    )
    return [WindowPoint(*row) for row in rows]


def firings(conn: sqlite3.Connection, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[str, str, int, str]]:
    return joined(
        conn,
        "trigger_id, subject, low, high",
        list(ranges),
        "SELECT w.trigger_id, w.subject, a.event_time, a.id FROM wanted w JOIN actions a"
        " ON a.trigger_id = w.trigger_id AND a.subject = w.subject AND a.event_time > w.low"
        " AND a.event_time <= w.high WHERE a.status != 'failed'",
    )


def existing_actions(conn: sqlite3.Connection, action_ids: Sequence[str]) -> set[str]:
    rows = joined(
        conn, "id", [(i,) for i in set(action_ids)], "SELECT a.id FROM wanted w JOIN actions a ON a.id = w.id"
    )
    return {row[0] for row in rows}


def active_enrollments(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, Mode, str, str]]
) -> list[tuple[str, Mode, str, str, str]]:
    return joined(
        conn,
        "tenant, mode, journey_id, subject",
        sorted(set(keys)),
        "SELECT w.tenant, w.mode, w.journey_id, w.subject, n.id FROM wanted w JOIN enrollments n"
        " ON n.tenant = w.tenant AND n.mode = w.mode AND n.journey_id = w.journey_id AND n.subject = w.subject"
        " WHERE n.status = 'active' ORDER BY n.enrolled_at, n.rowid",
    )


def profiles(conn: sqlite3.Connection, keys: Sequence[ScopedSubject]) -> dict[ScopedSubject, dict[str, Any]]:
    rows = joined(
        conn,
        "tenant, mode, subject",
        sorted(set(keys)),
        "SELECT w.tenant, w.mode, w.subject, p.attributes FROM wanted w JOIN profiles p"
        " ON p.tenant = w.tenant AND p.mode = w.mode AND p.subject = w.subject",
    )
    return {(t, m, s): msgspec.json.decode(attributes) for t, m, s, attributes in rows}


def progress(conn: sqlite3.Connection, ranges: Sequence[ProgressRange]) -> list[ProgressValue]:
    return joined(
        conn,
        "challenge_id, num, participant_id, low, high",
        _numbered(conn, ranges),
        "SELECT w.challenge_id, p.participant_id, p.bucket, p.value, p.reached_at, p.seq FROM wanted w"
        " JOIN challenge_progress p ON p.challenge = w.num AND p.participant_id = w.participant_id"
        " AND p.bucket BETWEEN w.low AND w.high",
    )


def distinct_values(conn: sqlite3.Connection, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
    return joined(
        conn,
        "challenge_id, num, participant_id, low, high",
        _numbered(conn, ranges),
        "SELECT w.challenge_id, v.participant_id, v.bucket, v.value FROM wanted w"
        " JOIN challenge_values v ON v.challenge = w.num AND v.participant_id = w.participant_id"
        " AND v.bucket BETWEEN w.low AND w.high",
    )


def completions(conn: sqlite3.Connection, pairs: Sequence[tuple[str, str]]) -> list[Completion]:
    columns = ", ".join(f"c.{name.strip()}" for name in COMPLETION_COLUMNS.split(","))
    rows = joined(
        conn,
        "challenge_id, participant_id",
        sorted(set(pairs)),
        f"SELECT {columns} FROM wanted w JOIN challenge_completions c"
        " ON c.challenge_id = w.challenge_id AND c.participant_id = w.participant_id",
    )
    return [Completion(t, m, c, p, o, period, from_us(at), e) for t, m, c, p, o, period, at, e in rows]


def held_badges(conn: sqlite3.Connection, keys: Sequence[ScopedSubject]) -> set[tuple[str, Mode, str, str]]:
    rows = joined(
        conn,
        "tenant, mode, participant_id",
        sorted(set(keys)),
        "SELECT w.tenant, w.mode, w.participant_id, b.badge FROM wanted w JOIN badge_awards b"
        " ON b.tenant = w.tenant AND b.mode = w.mode AND b.participant_id = w.participant_id",
    )
    return {(t, m, p, b) for t, m, p, b in rows}


class StateReadsOn:
    """`StateReads` on a connection getter: the live store reads on its reader threads, a
    rebuild on its scratch file."""

    async def run(self, fn: Any, *args: Any) -> Any:
        raise NotImplementedError

    async def window_points(self, pairs: Sequence[tuple[str, str]]) -> list[WindowPoint]:
        result: list[WindowPoint] = await self.run(window_points, pairs)
        return result

    async def firings(self, ranges: Sequence[tuple[str, str, int, int]]) -> list[tuple[str, str, int, str]]:
        result: list[tuple[str, str, int, str]] = await self.run(firings, ranges)
        return result

    async def existing_actions(self, action_ids: Sequence[str]) -> set[str]:
        result: set[str] = await self.run(existing_actions, action_ids)
        return result

    async def active_enrollments(
        self, keys: Sequence[tuple[str, Mode, str, str]]
    ) -> list[tuple[str, Mode, str, str, str]]:
        result: list[tuple[str, Mode, str, str, str]] = await self.run(active_enrollments, keys)
        return result

    async def profiles(self, keys: Sequence[ScopedSubject]) -> dict[ScopedSubject, dict[str, Any]]:
        result: dict[ScopedSubject, dict[str, Any]] = await self.run(profiles, keys)
        return result

    async def progress(self, ranges: Sequence[ProgressRange]) -> list[ProgressValue]:
        result: list[ProgressValue] = await self.run(progress, ranges)
        return result

    async def distinct_values(self, ranges: Sequence[ProgressRange]) -> list[tuple[str, str, int, str]]:
        result: list[tuple[str, str, int, str]] = await self.run(distinct_values, ranges)
        return result

    async def completions(self, pairs: Sequence[tuple[str, str]]) -> list[Completion]:
        result: list[Completion] = await self.run(completions, pairs)
        return result

    async def held_badges(self, keys: Sequence[ScopedSubject]) -> set[tuple[str, Mode, str, str]]:
        result: set[tuple[str, Mode, str, str]] = await self.run(held_badges, keys)
        return result
