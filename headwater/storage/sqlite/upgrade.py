"""Opening a data dir made by an older Headwater, which kept everything in one file.

Two steps, each safe to run again after a crash part-way:
1. `upgrade_main` (before the main file's schema): the events get their partition, computed
   once for every row with the same function the log appends with; the partition count is
   recorded; a `schemas` table without a mode gets one (`upgrade_schemas`).
2. `move_derived` (once every file is open): the derived rows still in the main file are
   copied into their partition's file (rows that are there already are kept), the catalog
   into the shared one; the old single checkpoint of each consumer becomes its checkpoint in
   every partition; and the old tables are dropped from the main file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from headwater.partitions import partition_of
from headwater.storage.records import WHOLE_LOG
from headwater.storage.sqlite.core import SqliteCore
from headwater.storage.sqlite.registry import SCHEMAS_TABLE

if TYPE_CHECKING:
    from headwater.storage.sqlite.derived import SqliteDerived


def _columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def upgrade_schemas(conn: sqlite3.Connection) -> None:
    """A `schemas` table of the older layout, without a mode, is rebuilt with one. Its schemas
    applied to both modes; they become live-mode schemas (a test-mode key can put its own), so
    test events stop being checked by them and nothing live changes."""
    columns = _columns(conn, "schemas")
    if not columns or "mode" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE schemas RENAME TO schemas_without_mode")
    conn.execute(SCHEMAS_TABLE)
    conn.execute(
        "INSERT INTO schemas (tenant, mode, type, version, enforcement, schema, created_at)"
        " SELECT tenant, 'live', type, version, enforcement, schema, created_at FROM schemas_without_mode"
    )
    conn.execute("DROP TABLE schemas_without_mode")
    conn.execute("COMMIT")


def upgrade_main(conn: sqlite3.Connection, partitions: int) -> None:
    upgrade_schemas(conn)
    columns = _columns(conn, "events")
    if not columns or "partition" in columns:
        return
    conn.create_function("hw_partition", 4, partition_of, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ALTER TABLE events ADD COLUMN partition INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE events SET partition = hw_partition(tenant, mode, subject, ?)", (partitions,))
    conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('partitions', ?)", (str(partitions),))
    conn.execute("COMMIT")


# Where each derived table of an older main file goes: the rows of a partition are those for
# which the expression (over the old file, the table as `x`; `hw_partition` is
# `partitions.partition_of`) is that partition; None: every partition gets them. Their layout
# is unchanged.
PARTITION = "hw_partition({}, {}, {}, {{n}})"
PARTITIONED: dict[str, tuple[str, str | None]] = {
    "actions": ("old.actions x", PARTITION.format("x.tenant", "x.mode", "x.subject")),
    "enrollments": ("old.enrollments x", PARTITION.format("x.tenant", "x.mode", "x.subject")),
    "profiles": ("old.profiles x", PARTITION.format("x.tenant", "x.mode", "x.subject")),
    # Windows belong to their trigger's tenant; those of a deleted trigger count for nothing.
    "trigger_windows": (
        "old.trigger_windows x JOIN old.triggers t ON t.id = x.trigger_id",
        PARTITION.format("t.tenant", "t.mode", "x.subject"),
    ),
    # An old delivery does not say which event caused it: it goes where an endpoint's test
    # messages go (the outbox is read and claimed in every partition alike).
    "webhook_deliveries": ("old.webhook_deliveries x", PARTITION.format("x.tenant", "x.mode", "x.endpoint_id")),
    "webhook_attempts": (
        "old.webhook_attempts x JOIN old.webhook_deliveries d ON d.id = x.delivery_id",
        PARTITION.format("d.tenant", "d.mode", "d.endpoint_id"),
    ),
    "challenge_keys": ("old.challenge_keys x", None),  # the same numbers in every partition
}
GAMIFICATION: dict[str, tuple[str, str | None]] = {
    "fact_effects": ("old.fact_effects x JOIN old.events e ON e.id = 'evt_' || substr(x.fact_id, 6)", "e.partition"),
    "challenge_progress": (
        "old.challenge_progress x JOIN old.challenge_keys k ON k.num = x.challenge"
        " JOIN old.challenges c ON c.id = k.challenge_id",
        PARTITION.format("c.tenant", "c.mode", "x.participant_id"),
    ),
    "challenge_values": (
        "old.challenge_values x JOIN old.challenge_keys k ON k.num = x.challenge"
        " JOIN old.challenges c ON c.id = k.challenge_id",
        PARTITION.format("c.tenant", "c.mode", "x.participant_id"),
    ),
    "challenge_completions": (
        "old.challenge_completions x",
        PARTITION.format("x.tenant", "x.mode", "x.participant_id"),
    ),
    "badge_awards": ("old.badge_awards x", PARTITION.format("x.tenant", "x.mode", "x.participant_id")),
    "points_ledger": ("old.points_ledger x", PARTITION.format("x.tenant", "x.mode", "x.participant_id")),
    "points_totals": ("old.points_totals x", PARTITION.format("x.tenant", "x.mode", "x.participant_id")),
}
SHARED: dict[str, tuple[str, str | None]] = {
    "catalog": ("old.catalog x", None),
    "catalog_properties": ("old.catalog_properties x", None),
}
OLD_ONLY = ("checkpoints", "trigger_changes", "gamification_changes", "facts")


def _old_tables(main_path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{main_path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _copy(conn: sqlite3.Connection, table: str, source: str, condition: str | None) -> None:
    columns = _columns(conn, table, "old")
    selected = ", ".join(f"x.{c}" for c in columns)
    where = f" WHERE {condition}" if condition else ""
    conn.execute(f"INSERT OR IGNORE INTO main.{table} ({', '.join(columns)}) SELECT {selected} FROM {source}{where}")


def _move_into(
    target: SqliteCore, main_path: Path, tables: dict[str, tuple[str, str | None]], where: str | None,
    checkpoints: list[tuple[str, int, int]],
) -> None:  # fmt: skip
    """Copy the rows of `tables` for which `where` holds into `target`'s file, in one transaction."""
    conn = sqlite3.connect(target.path, isolation_level=None, timeout=target.busy_timeout_ms / 1000)
    try:
        conn.create_function("hw_partition", 4, partition_of, deterministic=True)
        conn.execute("ATTACH DATABASE ? AS old", (str(main_path),))
        with target.other_writer():
            conn.execute("BEGIN IMMEDIATE")
            for table, (source, expression) in tables.items():
                condition = None if expression is None or where is None else f"{expression} = {where}"
                _copy(conn, table, source, condition)
            conn.executemany("INSERT OR IGNORE INTO main.checkpoints VALUES (?, ?, ?)", checkpoints)
            conn.execute("COMMIT")
    finally:
        conn.close()


async def move_derived(main: SqliteCore, derived: SqliteDerived) -> None:
    def run() -> None:
        present = _old_tables(main.path)
        movable = {**PARTITIONED, **GAMIFICATION, **SHARED}
        if not present & {*movable, "checkpoints"}:
            return
        conn = sqlite3.connect(f"file:{main.path}?mode=ro", uri=True)
        try:
            current = "challenge_progress" not in present or "seq" in _columns(conn, "challenge_progress")
            old_checkpoints = conn.execute("SELECT consumer, seq FROM checkpoints").fetchall() if (
                "checkpoints" in present) else []  # fmt: skip
        finally:
            conn.close()
        count = len(derived.parts)
        tables = {t: v for t, v in PARTITIONED.items() if t in present}
        if current:  # an older layout of progress is dropped: the facts consumer starts over
            tables |= {t: v for t, v in GAMIFICATION.items() if t in present}
        for part in derived.parts:
            n = part.partition
            placed = {t: (source, None if e is None else e.format(n=count)) for t, (source, e) in tables.items()}
            moved = [(c, n, seq) for c, seq in old_checkpoints if c != "catalog" and (current or c != "facts")]
            _move_into(part, main.path, placed, str(n), moved)
        shared = {t: v for t, v in SHARED.items() if t in present}
        catalog = [(c, WHOLE_LOG, seq) for c, seq in old_checkpoints if c == "catalog"]
        _move_into(derived.shared, main.path, shared, None, catalog)
        conn = sqlite3.connect(main.path, isolation_level=None, timeout=main.busy_timeout_ms / 1000)
        try:
            with main.other_writer():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("DROP TRIGGER IF EXISTS challenge_key")
                for table in sorted(present & {*movable, *OLD_ONLY}):
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
                conn.execute("COMMIT")
        finally:
            conn.close()

    await asyncio.to_thread(run)
